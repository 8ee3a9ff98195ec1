/* chat.c — rendering conversations in the chat formats models are fine-tuned with.
 *
 * fedllm does not interpret Jinja. A tokenizer_config.json chat_template is recognised by the
 * markers of its family and rendered by the code below, which reproduces what the family's
 * published template gives under transformers' apply_chat_template (checked against it on the
 * fixtures in tests/fixtures/tokenizers). The one piece of a template read as data is chatml's
 * default system message (Qwen2 inserts "You are a helpful assistant." when the conversation has
 * no system turn). */
#include <stdlib.h>
#include <string.h>

#include "fedllm/unicode.h"
#include "model/tokenizer_internal.h"

fl_chat_format fl_chat_detect(const char *text) {
    if (strstr(text, "<|im_start|>")) return FL_CHAT_CHATML;
    if (strstr(text, "<|start_header_id|>")) return FL_CHAT_LLAMA3;
    if (strstr(text, "[INST]") && strstr(text, "<<SYS>>")) return FL_CHAT_LLAMA2;
    return FL_CHAT_UNKNOWN;
}

/* chatml's default system message: the literal text between "<|im_start|>system\n" and
 * "<|im_end|>" in the template, when it is a plain string (no quotes, braces or variables).
 * Writes it to out (NUL-terminated) and returns 1, else 0. */
static int chatml_default_system(const char *tpl, char *out, size_t cap) {
    static const char *const openings[] = {"<|im_start|>system\\n", "<|im_start|>system\n"};
    for (int k = 0; k < 2; k++) {
        const char *at = strstr(tpl, openings[k]);
        if (!at) continue;
        at += strlen(openings[k]);
        const char *end = strstr(at, "<|im_end|>");
        if (!end || (size_t)(end - at) >= cap || end == at) return 0;
        for (const char *c = at; c < end; c++)
            if (*c == '\'' || *c == '"' || *c == '{' || *c == '}' || *c == '+' || *c == '\\')
                return 0;
        memcpy(out, at, (size_t)(end - at));
        out[end - at] = '\0';
        return 1;
    }
    return 0;
}

/* Python's str.strip(): whitespace is White_Space plus the ASCII separators U+001C..U+001F. */
static int strip_space(uint32_t c) { return (c >= 0x1C && c <= 0x1F) || fl_uni_is_space(c); }

static void strip(const char *s, const char **begin, size_t *len) {
    size_t n = strlen(s), b = 0, e = n, pos;
    uint32_t c;
    while (b < n) {
        pos = b;
        if (!fl_utf8_next(s, n, &pos, &c) || !strip_space(c)) break;
        b = pos;
    }
    while (e > b) {
        size_t k = e - 1;
        while (k > b && ((unsigned char)s[k] & 0xC0) == 0x80)
            k--;
        pos = k;
        if (!fl_utf8_next(s, e, &pos, &c) || !strip_space(c)) break;
        e = k;
    }
    *begin = s + b;
    *len = e - b;
}

static int put(fl_str *out, const char *s, fl_err *err) {
    return fl_str_append(out, s, strlen(s), err);
}

static int put_stripped(fl_str *out, const char *s, fl_err *err) {
    const char *b;
    size_t n;
    strip(s, &b, &n);
    return fl_str_append(out, b, n, err);
}

static const char *token_text(const fl_tokenizer *tok, int id) {
    const char *s = id >= 0 ? fl_tokenizer_token(tok, id, NULL) : NULL;
    return s ? s : "";
}

static int render_chatml(const fl_tokenizer *tok, const fl_chat_msg *m, int n, int gen, fl_str *out,
                         fl_err *err) {
    char system[1024];
    const char *tpl = fl_tokenizer_chat_template(tok);
    int rc = FL_OK;
    if (n > 0 && strcmp(m[0].role, "system") != 0 && tpl &&
        chatml_default_system(tpl, system, sizeof system)) {
        rc = put(out, "<|im_start|>system\n", err);
        if (!rc) rc = put(out, system, err);
        if (!rc) rc = put(out, "<|im_end|>\n", err);
    }
    for (int i = 0; i < n && !rc; i++) {
        rc = put(out, "<|im_start|>", err);
        if (!rc) rc = put(out, m[i].role, err);
        if (!rc) rc = put(out, "\n", err);
        if (!rc) rc = put(out, m[i].content, err);
        if (!rc) rc = put(out, "<|im_end|>\n", err);
    }
    if (!rc && gen) rc = put(out, "<|im_start|>assistant\n", err);
    return rc;
}

/* LLaMA-2-chat: an optional first system turn folded into the first user turn; then user and
 * assistant alternate, starting with user. */
static int render_llama2(const fl_tokenizer *tok, const fl_chat_msg *m, int n, fl_str *out,
                         fl_err *err) {
    const char *system = NULL;
    if (n > 0 && strcmp(m[0].role, "system") == 0) system = m[0].content, m++, n--;
    fl_str content = {0};
    int rc = FL_OK;
    for (int i = 0; i < n && !rc; i++) {
        int user = strcmp(m[i].role, "user") == 0;
        if (user != (i % 2 == 0)) {
            rc = fl_err_set(err, FL_EINPUT,
                            "chat (llama-2): message %d: roles must alternate user/assistant "
                            "after an optional system message",
                            i + (system != NULL));
            break;
        }
        content.n = 0;
        rc = put(&content, "", err);
        if (!rc && i == 0 && system) {
            rc = put(&content, "<<SYS>>\n", err);
            if (!rc) rc = put(&content, system, err);
            if (!rc) rc = put(&content, "\n<</SYS>>\n\n", err);
        }
        if (!rc) rc = put(&content, m[i].content, err);
        if (rc) break;
        if (user) {
            rc = put(out, token_text(tok, fl_tokenizer_bos(tok)), err);
            if (!rc) rc = put(out, "[INST] ", err);
            if (!rc) rc = put_stripped(out, content.s, err);
            if (!rc) rc = put(out, " [/INST]", err);
        } else {
            rc = put(out, " ", err);
            if (!rc) rc = put_stripped(out, content.s, err);
            if (!rc) rc = put(out, " ", err);
            if (!rc) rc = put(out, token_text(tok, fl_tokenizer_eos(tok)), err);
        }
    }
    fl_str_free(&content);
    return rc;
}

static int render_llama3(const fl_tokenizer *tok, const fl_chat_msg *m, int n, int gen, fl_str *out,
                         fl_err *err) {
    int rc = FL_OK;
    for (int i = 0; i < n && !rc; i++) {
        if (i == 0) rc = put(out, token_text(tok, fl_tokenizer_bos(tok)), err);
        if (!rc) rc = put(out, "<|start_header_id|>", err);
        if (!rc) rc = put(out, m[i].role, err);
        if (!rc) rc = put(out, "<|end_header_id|>\n\n", err);
        if (!rc) rc = put_stripped(out, m[i].content, err);
        if (!rc) rc = put(out, "<|eot_id|>", err);
    }
    if (!rc && gen) rc = put(out, "<|start_header_id|>assistant<|end_header_id|>\n\n", err);
    return rc;
}

/* fedllm's plain format, for models without a chat template. */
static int render_plain(const fl_chat_msg *m, int n, int gen, fl_str *out, fl_err *err) {
    int rc = FL_OK;
    for (int i = 0; i < n && !rc; i++) {
        const char *role = strcmp(m[i].role, "system") == 0      ? "System: "
                           : strcmp(m[i].role, "user") == 0      ? "User: "
                           : strcmp(m[i].role, "assistant") == 0 ? "Assistant: "
                                                                 : NULL;
        if (!role)
            return fl_err_set(err, FL_EINPUT,
                              "chat (plain): message %d: role '%.40s': expected system, user or "
                              "assistant",
                              i, m[i].role);
        rc = put(out, role, err);
        if (!rc) rc = put(out, m[i].content, err);
        if (!rc) rc = put(out, "\n\n", err);
    }
    if (!rc && gen) rc = put(out, "Assistant:", err);
    return rc;
}

int fl_chat_render(const fl_tokenizer *tok, const fl_chat_msg *msgs, int n_msgs,
                   int add_generation_prompt, fl_str *out, fl_err *err) {
    if (fl_str_append(out, "", 0, err)) return err->code;
    for (int i = 0; i < n_msgs; i++)
        if (!msgs[i].role || !msgs[i].role[0] || !msgs[i].content)
            return fl_err_set(err, FL_EINPUT, "chat: message %d: expected a role and a content", i);
    switch (fl_tokenizer_chat_format_of(tok)) {
    case FL_CHAT_PLAIN: return render_plain(msgs, n_msgs, add_generation_prompt, out, err);
    case FL_CHAT_CHATML: return render_chatml(tok, msgs, n_msgs, add_generation_prompt, out, err);
    case FL_CHAT_LLAMA2: return render_llama2(tok, msgs, n_msgs, out, err);
    case FL_CHAT_LLAMA3: return render_llama3(tok, msgs, n_msgs, add_generation_prompt, out, err);
    default: break;
    }
    const char *tpl = fl_tokenizer_chat_template(tok);
    return fl_err_set(err, FL_EINPUT,
                      "tokenizer_config.json: chat_template \"%.60s...\" is not one fedllm "
                      "recognises (chatml, llama-2, llama-3); choose one with --chat-template",
                      tpl ? tpl : "");
}
