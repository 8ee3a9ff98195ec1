/* template.h — prompt templates over a JSON record: a small subset of Jinja, enough for the
 * prompts FATE-LLM's InferDPT, PDSS and FDKT jobs write.
 *
 *   {{ field }}           the record's field: a string as it is, a number or boolean as JSON
 *   {{ a.b }}, {{ a.0 }}  a member of an object, an element of a list
 *   {{ x | join(", ") }}  the elements of a list, each rendered as above, separated
 *   {{ x | trim }}        without leading and trailing white space
 *   {{ x | upper }}, {{ x | lower }}
 *   {{ "text" }}          a string literal (for braces: {{ "{{" }})
 * Anything else between {{ and }}, a field the record lacks, a list or object rendered without
 * join, or an unclosed {{ is FL_EINPUT naming the template and what was expected. */
#ifndef FEDLLM_TEMPLATE_H
#define FEDLLM_TEMPLATE_H

#include <cjson/cJSON.h>

#include "fedllm/err.h"
#include "fedllm/tokenizer.h"

/* Appends template rendered over record (a JSON object) to out. name prefixes error messages
 * (e.g. "--instruction-template"); out may hold part of the text on error. */
int fl_template_render(const char *template, const cJSON *record, const char *name, fl_str *out,
                       fl_err *err);
/* Only checks template's syntax (the same errors as rendering, fields not looked up). */
int fl_template_check(const char *template, const char *name, fl_err *err);

#endif
