/* test_safetensors.c — the safetensors writer and reader: a roundtrip through every dtype,
 * hand-made F16/BF16 files whose bit patterns have known values, loading a parameter table, and
 * hostile files (truncated, lying lengths, overlapping or oversized ranges, bad JSON), each of
 * which must be refused with FL_EINPUT naming the file, never a crash. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fedllm/fileio.h"
#include "fedllm/params.h"
#include "fedllm/rng.h"
#include "fedllm/safetensors.h"
#include "testutil.h"

static const char *dir;

static const char *tmp_path(const char *name) {
    static char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

/* A file with the given header (unpadded, so data may start unaligned) followed by data. */
static void write_raw(const char *path, const char *header, const void *data, size_t data_len) {
    size_t h = strlen(header);
    size_t total = 8 + h + data_len;
    unsigned char *buf = malloc(total);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    if (data_len) memcpy(buf + 8 + h, data, data_len);
    fl_write_file_atomic(path, buf, total, NULL);
    free(buf);
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static void test_roundtrip_all_dtypes(void) {
    float f32[6] = {1.5f, -2.25f, 0.0f, 3e-30f, -1e30f, 7.0f};
    uint16_t f16[3] = {0x3C00, 0xC000, 0x0001}; /* 1, -2, 2^-24 */
    uint16_t bf16[2] = {0x3F80, 0xC0A0};        /* 1, -5 */
    int32_t i32[4] = {-7, 0, 2147483647, -2147483647 - 1};
    int64_t i64[2] = {-5, 123456789};
    double f64[2] = {0.1, -3.5};
    uint8_t u8[5] = {0, 1, 2, 254, 255};
    float scalar = 42.0f;
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s2[1] = {2}, s4[1] = {4}, s5[1] = {5}, s03[2] = {0, 3};
    fl_err err = {0};
    fl_st_writer *w = fl_st_writer_new(&err);
    CHECK(w != NULL, "writer");
    CHECK(fl_st_writer_add(w, "f32", FL_DTYPE_F32, 2, s23, f32, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_writer_add(w, "f16", FL_DTYPE_F16, 1, s3, f16, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_writer_add(w, "bf16", FL_DTYPE_BF16, 1, s2, bf16, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_writer_add(w, "i32", FL_DTYPE_I32, 1, s4, i32, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_writer_add(w, "i64", FL_DTYPE_I64, 1, s2, i64, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_writer_add(w, "f64", FL_DTYPE_F64, 1, s2, f64, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_writer_add(w, "u8", FL_DTYPE_U8, 1, s5, u8, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_writer_add(w, "scalar", FL_DTYPE_F32, 0, NULL, &scalar, &err) == FL_OK, "%s",
          err.msg);
    CHECK(fl_st_writer_add(w, "empty", FL_DTYPE_F32, 2, s03, NULL, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_writer_add(w, "f32", FL_DTYPE_F32, 1, s3, f32, &err) == FL_EINPUT,
          "duplicate name refused");
    CHECK(fl_st_writer_meta(w, "format", "pt", &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_writer_meta(w, "note", "quote \" and\nnewline", &err) == FL_OK, "%s", err.msg);
    const char *path = tmp_path("all.safetensors");
    CHECK(fl_st_write(w, path, &err) == FL_OK, "%s", err.msg);
    fl_st_writer_free(w);

    fl_st_file f;
    int rc = fl_st_open(&f, path, &err);
    CHECK(rc == FL_OK, "%s", err.msg);
    if (rc != FL_OK) return;
    CHECK(f.n_tensors == 9, "n_tensors %d", f.n_tensors);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | ((const unsigned char *)f.map)[i];
    CHECK(h % 8 == 0, "header length %llu is a multiple of 8", (unsigned long long)h);
    /* insertion order, contiguous data */
    const char *order[] = {"f32", "f16", "bf16", "i32", "i64", "f64", "u8", "scalar", "empty"};
    const unsigned char *expect_at = (const unsigned char *)f.map + 8 + h;
    for (int i = 0; i < 9; i++) {
        CHECK(strcmp(f.tensors[i].name, order[i]) == 0, "tensor %d is %s", i, f.tensors[i].name);
        CHECK(f.tensors[i].data == expect_at, "tensor %s is contiguous", order[i]);
        expect_at += f.tensors[i].bytes;
    }
    CHECK((size_t)(expect_at - (const unsigned char *)f.map) == f.size, "no trailing bytes");
    CHECK(fl_st_meta(&f, "format") && strcmp(fl_st_meta(&f, "format"), "pt") == 0, "meta format");
    CHECK(fl_st_meta(&f, "note") && strcmp(fl_st_meta(&f, "note"), "quote \" and\nnewline") == 0,
          "meta escaping");
    CHECK(fl_st_meta(&f, "absent") == NULL, "absent meta");

    float out[8];
    const fl_st_tensor *t = fl_st_find(&f, "f32");
    CHECK(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->dtype == FL_DTYPE_F32,
          "f32 header");
    CHECK(fl_st_to_f32(t, out, &err) == FL_OK && memcmp(out, f32, sizeof f32) == 0, "f32 data");
    t = fl_st_find(&f, "f16");
    CHECK(fl_st_to_f32(t, out, &err) == FL_OK && out[0] == 1.0f && out[1] == -2.0f &&
              out[2] == ldexpf(1.0f, -24),
          "f16 data %g %g %g", out[0], out[1], out[2]);
    t = fl_st_find(&f, "bf16");
    CHECK(fl_st_to_f32(t, out, &err) == FL_OK && out[0] == 1.0f && out[1] == -5.0f, "bf16 data");
    t = fl_st_find(&f, "f64");
    CHECK(fl_st_to_f32(t, out, &err) == FL_OK && out[0] == 0.1f && out[1] == -3.5f, "f64 data");
    t = fl_st_find(&f, "scalar");
    CHECK(t && t->ndim == 0 && t->numel == 1 && fl_st_to_f32(t, out, &err) == FL_OK &&
              out[0] == 42.0f,
          "scalar");
    t = fl_st_find(&f, "empty");
    CHECK(t && t->numel == 0 && t->bytes == 0 && fl_st_to_f32(t, out, &err) == FL_OK, "empty");

    int32_t iout[4];
    t = fl_st_find(&f, "i32");
    CHECK(fl_st_to_i32(t, iout, &err) == FL_OK && memcmp(iout, i32, sizeof i32) == 0, "i32 data");
    CHECK(fl_st_to_f32(t, out, &err) == FL_EINPUT && strstr(err.msg, "'i32'"),
          "i32 is not float: %s", err.msg);
    t = fl_st_find(&f, "i64");
    CHECK(fl_st_to_i32(t, iout, &err) == FL_OK && iout[0] == -5 && iout[1] == 123456789,
          "i64 data");
    t = fl_st_find(&f, "u8");
    CHECK(t && t->bytes == 5 && memcmp(t->data, u8, 5) == 0, "u8 data");
    CHECK(fl_st_to_i32(t, iout, &err) == FL_EINPUT, "u8 to int32 refused");
    CHECK(fl_st_find(&f, "nope") == NULL, "absent tensor");
    fl_st_close(&f);
    CHECK(f.map == NULL && f.n_tensors == 0, "close zeroes");
}

/* Every F16 class (normal, subnormal, zero, inf, NaN) and BF16, from a file made by hand with an
 * odd-length header so that the data is unaligned. */
static void test_half_bit_patterns(void) {
    const uint16_t f16[] = {0x3C00, 0xC000, 0x7BFF, 0x0400, 0x03FF, 0x0001, 0x8001,
                            0x3555, 0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x0200};
    const float f16_expect[] = {1.0f,
                                -2.0f,
                                65504.0f,
                                ldexpf(1.0f, -14),
                                ldexpf(1023.0f, -24),
                                ldexpf(1.0f, -24),
                                -ldexpf(1.0f, -24),
                                0.333251953125f,
                                0.0f,
                                -0.0f,
                                INFINITY,
                                -INFINITY,
                                NAN,
                                ldexpf(1.0f, -15)};
    const uint16_t bf16[] = {0x3F80, 0xC0A0, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x4049};
    const float bf16_expect[] = {1.0f,  -5.0f,    INFINITY, -INFINITY, ldexpf(1.0f, -133),
                                 -0.0f, 3.140625f};
    enum { NF = sizeof f16 / 2, NB = sizeof bf16 / 2 };
    unsigned char data[2 * (NF + NB)];
    for (int i = 0; i < NF; i++)
        data[2 * i] = f16[i] & 0xFF, data[2 * i + 1] = f16[i] >> 8;
    for (int i = 0; i < NB; i++)
        data[2 * NF + 2 * i] = bf16[i] & 0xFF, data[2 * NF + 2 * i + 1] = bf16[i] >> 8;
    char header[256];
    snprintf(header, sizeof header,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[0,%d]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[%d],\"data_offsets\":[%d,%d]}}",
             NF, 2 * NF, NB, 2 * NF, 2 * (NF + NB));
    if (strlen(header) % 2 == 0) strcat(header, " "); /* odd: data starts on an odd address */
    const char *path = tmp_path("half.safetensors");
    write_raw(path, header, data, sizeof data);
    fl_st_file f;
    fl_err err = {0};
    int rc = fl_st_open(&f, path, &err);
    CHECK(rc == FL_OK, "%s", err.msg);
    if (rc != FL_OK) return;
    float out[NF];
    CHECK(fl_st_to_f32(fl_st_find(&f, "h"), out, &err) == FL_OK, "%s", err.msg);
    for (int i = 0; i < NF; i++) {
        if (isnan(f16_expect[i]))
            CHECK(isnan(out[i]), "f16 %04x is NaN", f16[i]);
        else
            CHECK(same_bits(out[i], f16_expect[i]), "f16 %04x -> %a, expected %a", f16[i],
                  (double)out[i], (double)f16_expect[i]);
    }
    CHECK(fl_st_to_f32(fl_st_find(&f, "b"), out, &err) == FL_OK, "%s", err.msg);
    for (int i = 0; i < NB; i++)
        CHECK(same_bits(out[i], bf16_expect[i]), "bf16 %04x -> %a, expected %a", bf16[i],
              (double)out[i], (double)bf16_expect[i]);
    fl_st_close(&f);

    /* Exhaustive F16: every finite half equals its sign * mantissa * 2^exponent. */
    uint16_t all[65536];
    for (int i = 0; i < 65536; i++)
        all[i] = (uint16_t)i;
    int64_t shape[1] = {65536};
    fl_st_writer *w = fl_st_writer_new(&err);
    fl_st_writer_add(w, "all", FL_DTYPE_F16, 1, shape, all, &err);
    path = tmp_path("f16all.safetensors");
    CHECK(fl_st_write(w, path, &err) == FL_OK, "%s", err.msg);
    fl_st_writer_free(w);
    float *conv = malloc(65536 * sizeof *conv);
    int bad = 0;
    if (fl_st_open(&f, path, &err) == FL_OK && fl_st_to_f32(&f.tensors[0], conv, &err) == FL_OK) {
        for (int i = 0; i < 65536; i++) {
            int e = (i >> 10) & 31, m = i & 1023;
            float sign = (i & 0x8000) ? -1.0f : 1.0f;
            if (e == 31) {
                bad += m ? !isnan(conv[i]) : conv[i] != sign * INFINITY;
                continue;
            }
            float expect =
                e ? sign * ldexpf((float)(1024 + m), e - 25) : sign * ldexpf((float)m, -24);
            bad += !same_bits(conv[i], expect);
        }
        fl_st_close(&f);
    } else {
        bad = -1;
    }
    CHECK(bad == 0, "exhaustive f16: %d wrong", bad);
    free(conv);
}

static void test_load_params(void) {
    fl_err err = {0};
    fl_params p = {0}, q = {0};
    int64_t s1[2] = {3, 5}, s2[1] = {7};
    fl_params_add(&p, "model.a.weight", 2, s1, &err);
    fl_params_add(&p, "model.b.bias", 1, s2, &err);
    CHECK(fl_params_alloc(&p, &err) == FL_OK, "%s", err.msg);
    fl_rng_normal(p.data, p.numel, 7, 0, 1.0f);
    fl_st_writer *w = fl_st_writer_new(&err);
    CHECK(fl_st_writer_add_params(w, &p, "", &err) == FL_OK, "%s", err.msg);
    const char *path = tmp_path("params.safetensors");
    CHECK(fl_st_write(w, path, &err) == FL_OK, "%s", err.msg);
    fl_st_writer_free(w);

    CHECK(fl_params_clone_layout(&q, &p, &err) == FL_OK, "%s", err.msg);
    fl_st_file f;
    CHECK(fl_st_open(&f, path, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_load_params(&f, &q, 0, &err) == FL_OK, "%s", err.msg);
    CHECK(memcmp(fl_params_get(&p, "model.a.weight"), fl_params_get(&q, "model.a.weight"),
                 15 * sizeof(float)) == 0 &&
              memcmp(fl_params_get(&p, "model.b.bias"), fl_params_get(&q, "model.b.bias"),
                     7 * sizeof(float)) == 0,
          "params roundtrip");
    fl_st_close(&f);

    /* a view with another shape */
    fl_params r = {0};
    int64_t wrong[2] = {5, 3};
    fl_params_add(&r, "model.a.weight", 2, wrong, &err);
    fl_params_alloc(&r, &err);
    fl_st_open(&f, path, &err);
    CHECK(fl_st_load_params(&f, &r, 1, &err) == FL_EINPUT && strstr(err.msg, path) &&
              strstr(err.msg, "'model.a.weight'") && strstr(err.msg, "[3, 5]") &&
              strstr(err.msg, "[5, 3]"),
          "shape mismatch: %s", err.msg);
    fl_params_free(&r);
    /* a view the file lacks */
    int64_t s3[1] = {2};
    fl_params_add(&r, "model.c", 1, s3, &err);
    fl_params_alloc(&r, &err);
    CHECK(fl_st_load_params(&f, &r, 1, &err) == FL_EINPUT && strstr(err.msg, "'model.c' not found"),
          "missing tensor: %s", err.msg);
    fl_params_free(&r);
    /* a file with more tensors than the table */
    fl_params_add(&r, "model.b.bias", 1, s2, &err);
    fl_params_alloc(&r, &err);
    CHECK(fl_st_load_params(&f, &r, 0, &err) == FL_EINPUT && strstr(err.msg, "model.a.weight"),
          "extra tensor refused: %s", err.msg);
    CHECK(fl_st_load_params(&f, &r, 1, &err) == FL_OK, "extra tensor allowed: %s", err.msg);
    fl_params_free(&r);
    fl_st_close(&f);

    /* prefix */
    w = fl_st_writer_new(&err);
    CHECK(fl_st_writer_add_params(w, &p, "base_model.", &err) == FL_OK, "%s", err.msg);
    CHECK(fl_st_write(w, path, &err) == FL_OK, "%s", err.msg);
    fl_st_writer_free(w);
    CHECK(fl_st_open(&f, path, &err) == FL_OK && fl_st_find(&f, "base_model.model.b.bias"),
          "prefixed name");
    fl_st_close(&f);
    fl_params_free(&p);
    fl_params_free(&q);
}

/* Writes a hostile file, expects FL_EINPUT with the path and `phrase` in the message. */
static void expect_refused(const char *name, const char *header, size_t data_len,
                           const char *phrase) {
    unsigned char *data = calloc(1, data_len + 1);
    const char *path = tmp_path(name);
    write_raw(path, header, data, data_len);
    free(data);
    fl_st_file f;
    fl_err err = {0};
    int rc = fl_st_open(&f, path, &err);
    CHECK(rc == FL_EINPUT && strstr(err.msg, path) && strstr(err.msg, phrase),
          "%s: rc %d, message '%s', expected '%s'", name, rc, err.msg, phrase);
    CHECK(f.map == NULL && f.tensors == NULL, "%s: nothing left open", name);
    if (rc == FL_OK) fl_st_close(&f);
}

static void expect_refused_bytes(const char *name, const void *bytes, size_t len,
                                 const char *phrase) {
    const char *path = tmp_path(name);
    fl_write_file_atomic(path, bytes, len, NULL);
    fl_st_file f;
    fl_err err = {0};
    int rc = fl_st_open(&f, path, &err);
    CHECK(rc == FL_EINPUT && strstr(err.msg, path) && strstr(err.msg, phrase),
          "%s: rc %d, message '%s', expected '%s'", name, rc, err.msg, phrase);
    if (rc == FL_OK) fl_st_close(&f);
}

static void test_hostile_files(void) {
    expect_refused_bytes("empty.st", "", 0, "too short");
    expect_refused_bytes("five.st", "\x02\0\0\0\0", 5, "too short");
    /* H says 1000 bytes, the file has 10 after the length */
    expect_refused_bytes("bigh.st", "\xe8\x03\0\0\0\0\0\0{}        ", 18, "header length 1000");
    expect_refused_bytes("hugeh.st", "\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10, "header length");
    /* H within the file but beyond the 100 MB cap: a sparse file of 100 MB and a bit */
    const char *capped = tmp_path("capped.st");
    expect_refused_bytes("capped.st", "\x01\xe1\xf5\x05\0\0\0\0{}", 10, "header length");
    if (truncate(capped, 8 + 100000001) == 0) {
        fl_st_file f;
        fl_err err = {0};
        CHECK(fl_st_open(&f, capped, &err) == FL_EINPUT && strstr(err.msg, "100000000-byte limit"),
              "header cap: %s", err.msg);
        unlink(capped);
    }

    expect_refused("past_end.st",
                   "{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
                   "tensor 't': data_offsets [0, 16] exceed the file (8 bytes of data)");
    expect_refused("overlap.st",
                   "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                   12, "overlap");
    expect_refused("same_range.st",
                   "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                   8, "overlap");
    expect_refused("mismatch.st",
                   "{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                   "tensor 't': data_offsets [0, 8] hold 8 bytes, but F32 of shape [3] needs 12");
    expect_refused("dtype.st",
                   "{\"t\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                   "dtype 'F8_E4M3' is not supported");
    expect_refused("dtype_num.st", "{\"t\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "dtype: expected a string");
    expect_refused("notjson.st", "{\"t\": {\"dtype\": \"F32\", ", 0, "not valid JSON");
    expect_refused("garbage.st", "hello world", 0, "not valid JSON");
    expect_refused("array.st", "[1, 2, 3]", 0, "expected a JSON object");
    expect_refused("trailing.st", "{} {}", 0, "unexpected bytes");
    expect_refused("negdim.st", "{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}",
                   0, "shape[0]: expected a non-negative integer");
    expect_refused("fracdim.st",
                   "{\"t\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,10]}}", 10,
                   "shape[0]");
    expect_refused("strdim.st",
                   "{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
                   "shape[0]");
    expect_refused("fivedims.st",
                   "{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
                   "at most 4");
    expect_refused("noshape.st", "{\"t\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "shape");
    expect_refused("overflow.st",
                   "{\"t\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
                   "\"data_offsets\":[0,8]}}",
                   8, "too large");
    expect_refused("bigdim.st",
                   "{\"t\":{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,8]}}", 8,
                   "shape[0]");
    expect_refused("reversed.st", "{\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,2]}}",
                   8, "begin <= end");
    expect_refused("negoff.st", "{\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[-2,0]}}",
                   8, "data_offsets");
    expect_refused("threeoff.st",
                   "{\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2,4]}}", 8,
                   "data_offsets");
    expect_refused("nooff.st", "{\"t\":{\"dtype\":\"U8\",\"shape\":[2]}}", 8, "data_offsets");
    expect_refused("notobj.st", "{\"t\":[1,2]}", 0, "tensor 't': expected an object");
    expect_refused("dup.st",
                   "{\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                   "\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}",
                   4, "'t' appears twice");
    expect_refused("meta.st", "{\"__metadata__\":{\"format\":1}}", 0,
                   "__metadata__: 'format': expected a string");
    expect_refused("meta_arr.st", "{\"__metadata__\":[\"x\"]}", 0, "__metadata__");
    char longname[400];
    snprintf(longname, sizeof longname,
             "{\"%0200d\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0);
    expect_refused("longname.st", longname, 0, "name longer than");

    /* Zero-length tensors own no bytes, so they may share offsets with anything. */
    const char *ok_header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"z\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
                            "\"__metadata__\":null}";
    const char *path = tmp_path("zero_inside.st");
    float two[2] = {1, 2};
    write_raw(path, ok_header, two, sizeof two);
    fl_st_file f;
    fl_err err = {0};
    CHECK(fl_st_open(&f, path, &err) == FL_OK, "zero-length tensor inside another: %s", err.msg);
    fl_st_close(&f);

    CHECK(fl_st_open(&f, tmp_path("does_not_exist.st"), &err) == FL_EINPUT &&
              strstr(err.msg, "does_not_exist.st"),
          "missing file: %s", err.msg);
    CHECK(fl_st_open(&f, dir, &err) != FL_OK && strstr(err.msg, dir), "folder: %s", err.msg);
}

/* Every truncation of a valid file, and random byte flips in its header: never a crash, and a
 * truncated file is always refused. */
static void test_truncations_and_flips(void) {
    fl_err err = {0};
    float values[6] = {1, 2, 3, 4, 5, 6};
    int64_t s[2] = {2, 3};
    fl_st_writer *w = fl_st_writer_new(&err);
    fl_st_writer_add(w, "x", FL_DTYPE_F32, 2, s, values, &err);
    fl_st_writer_add(w, "y", FL_DTYPE_F32, 1, s, values, &err);
    fl_st_writer_meta(w, "k", "v", &err);
    const char *path = tmp_path("valid.st");
    fl_st_write(w, path, &err);
    fl_st_writer_free(w);
    char *bytes = NULL;
    size_t len = 0;
    CHECK(fl_read_file(path, &bytes, &len, 1 << 20, &err) == FL_OK, "%s", err.msg);
    if (!bytes) return;
    const char *cut = tmp_path("cut.st");
    int accepted = 0;
    for (size_t n = 0; n < len; n++) {
        fl_write_file_atomic(cut, bytes, n, NULL);
        fl_st_file f;
        int rc = fl_st_open(&f, cut, &err);
        accepted += rc != FL_EINPUT;
        if (rc == FL_OK) fl_st_close(&f);
    }
    CHECK(accepted == 0, "%d truncations accepted", accepted);

    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | (unsigned char)bytes[i];
    char *mutated = malloc(len);
    int crashed_or_internal = 0;
    for (int trial = 0; trial < 3000; trial++) {
        memcpy(mutated, bytes, len);
        uint32_t r[4];
        fl_philox(99, (uint64_t)trial, r);
        for (int k = 0; k < 1 + (int)(r[3] % 3); k++) {
            fl_philox(100 + (uint64_t)k, (uint64_t)trial, r);
            size_t at = 8 + r[0] % h;
            mutated[at] = (char)(r[1] & 1 ? "0123456789-[]{},:\"e."[r[2] % 20] : (char)r[2]);
        }
        fl_write_file_atomic(cut, mutated, len, NULL);
        fl_st_file f;
        int rc = fl_st_open(&f, cut, &err);
        crashed_or_internal += rc != FL_OK && rc != FL_EINPUT;
        if (rc == FL_OK) {
            float out[6];
            for (int i = 0; i < f.n_tensors; i++)
                if (f.tensors[i].dtype == FL_DTYPE_F32 && f.tensors[i].numel <= 6)
                    fl_st_to_f32(&f.tensors[i], out, &err);
            fl_st_close(&f);
        }
    }
    CHECK(crashed_or_internal == 0, "%d flips gave a code other than OK or EINPUT",
          crashed_or_internal);
    free(mutated);
    free(bytes);
}

static void test_writer_errors(void) {
    fl_err err = {0};
    fl_st_writer *w = fl_st_writer_new(&err);
    int64_t s[1] = {1};
    float x = 1;
    CHECK(fl_st_writer_add(w, "__metadata__", FL_DTYPE_F32, 1, s, &x, &err) == FL_EINPUT,
          "reserved name");
    CHECK(fl_st_writer_add(w, "", FL_DTYPE_F32, 1, s, &x, &err) == FL_EINPUT, "empty name");
    CHECK(fl_st_writer_add(w, "a\"b", FL_DTYPE_F32, 1, s, &x, &err) == FL_OK, "%s", err.msg);
    const char *path = tmp_path("no_such_dir/x.st");
    CHECK(fl_st_write(w, path, &err) == FL_EIO && strstr(err.msg, "no_such_dir"), "bad folder: %s",
          err.msg);
    path = tmp_path("quoted.st");
    CHECK(fl_st_write(w, path, &err) == FL_OK, "%s", err.msg);
    fl_st_writer_free(w);
    fl_st_file f;
    CHECK(fl_st_open(&f, path, &err) == FL_OK && fl_st_find(&f, "a\"b"), "escaped name: %s",
          err.msg);
    fl_st_close(&f);
}

int main(void) {
    dir = tu_tmpdir("test_safetensors");
    test_roundtrip_all_dtypes();
    test_half_bit_patterns();
    test_load_params();
    test_hostile_files();
    test_truncations_and_flips();
    test_writer_errors();
    return tu_finish("test_safetensors");
}
