/* Unit tests: canonical request paths (sl_path) and matching through them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sl_config.h"
#include "sl_path.h"
#include "sl_store.h"

static int canon(const char *in, unsigned flags, char *out, bool *trailing)
{
    size_t n;
    return sl_path_canonical(in, strlen(in), flags, out, &n, trailing);
}

/* Every spelling in a group reaches the same canonical form. */
static void test_spellings_of_one_endpoint(void **state)
{
    static const char *const login[] = {
        "/api/v2/login", "/api/v2/login/", "//api//v2///login", "/api/v2/login;jsessionid=1",
        "/api;x/v2/login", "/api%2Fv2/login", "/api%2fv2%2flogin", "/api\\v2\\login",
        "/api%5Cv2/login", "/%61pi/v2/log%69n", "/API/V2/LOGIN", "/Api/v2/Login/;x",
        "/api/v2/login%3Bfoo",
    };
    char out[64];
    bool trailing;
    (void)state;

    for (size_t i = 0; i < sizeof(login) / sizeof(login[0]); i++) {
        assert_int_equal(canon(login[i], SL_PATH_FOLD_CASE, out, &trailing), SL_PATH_OK);
        assert_string_equal(out, "/api/v2/login");
    }
    assert_int_equal(canon("/api/v2/login/", 0, out, &trailing), SL_PATH_OK);
    assert_true(trailing);
    assert_int_equal(canon("/api/v2/login", 0, out, &trailing), SL_PATH_OK);
    assert_false(trailing);
    /* Without folding, case is kept. */
    assert_int_equal(canon("/API/v2", 0, out, NULL), SL_PATH_OK);
    assert_string_equal(out, "/API/v2");
    assert_int_equal(canon("", 0, out, &trailing), SL_PATH_OK);
    assert_string_equal(out, "/");
    assert_int_equal(canon("/", 0, out, &trailing), SL_PATH_OK);
    assert_string_equal(out, "/");
    assert_false(trailing);
    assert_int_equal(canon("///;x", 0, out, &trailing), SL_PATH_OK);
    assert_string_equal(out, "/");
}

/* Every spelling of a dot segment is refused, wherever it stands. */
static void test_dot_segments_in_every_spelling(void **state)
{
    static const char *const bad[] = {
        "/..", "/../secret", "/a/../../secret", "/a/./b", "/.", "/a/..",
        "/..%2Fsecret", "/%2e%2e/secret", "/%2E%2E%2Fsecret", "/.%2e/x", "/%2e./x",
        "/..;/secret", "/..;x/secret", "/a/%2e%2e;/b", "/..\\secret", "/..%5csecret",
        "/a\\..\\b", "/...", "/.. /x", "/%2e%2e%20/x", "/%2e",
    };
    char out[64];
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        print_message("%s\n", bad[i]);
        assert_int_equal(canon(bad[i], 0, out, NULL), SL_PATH_DOT_SEGMENT);
    }
    /* Dots inside a segment are ordinary characters. */
    assert_int_equal(canon("/v2.1/a..b/.well-known/x.", 0, out, NULL), SL_PATH_OK);
    assert_string_equal(out, "/v2.1/a..b/.well-known/x.");
}

static void test_refused_encodings(void **state)
{
    char out[64];
    (void)state;

    assert_int_equal(canon("/a%2", 0, out, NULL), SL_PATH_BAD_ESCAPE);
    assert_int_equal(canon("/a%", 0, out, NULL), SL_PATH_BAD_ESCAPE);
    assert_int_equal(canon("/a%zz", 0, out, NULL), SL_PATH_BAD_ESCAPE);
    assert_int_equal(canon("/a%u002e", 0, out, NULL), SL_PATH_BAD_ESCAPE);
    assert_int_equal(canon("/a%00b", 0, out, NULL), SL_PATH_CONTROL);
    assert_int_equal(canon("/a%0d%0ab", 0, out, NULL), SL_PATH_CONTROL);
    assert_int_equal(canon("/a\tb", 0, out, NULL), SL_PATH_CONTROL);
    assert_int_equal(canon("/a%7fb", 0, out, NULL), SL_PATH_CONTROL);
    /* Double encoding of structure: a server decoding twice reads "..". */
    assert_int_equal(canon("/%252e%252e/secret", 0, out, NULL), SL_PATH_DOUBLE_ENCODED);
    assert_int_equal(canon("/a%252Fb", 0, out, NULL), SL_PATH_DOUBLE_ENCODED);
    assert_int_equal(canon("/a%255cb", 0, out, NULL), SL_PATH_DOUBLE_ENCODED);
    assert_int_equal(canon("/a%253bb", 0, out, NULL), SL_PATH_DOUBLE_ENCODED);
    assert_int_equal(canon("/a%2525", 0, out, NULL), SL_PATH_DOUBLE_ENCODED);
    /* Any escape left after one decoding: "le%2561d" is "lead" to a server
     * that decodes twice. */
    assert_int_equal(canon("/le%2561d-result", 0, out, NULL), SL_PATH_DOUBLE_ENCODED);
    assert_int_equal(canon("/%2541pi", 0, out, NULL), SL_PATH_DOUBLE_ENCODED);
    /* Overlong UTF-8 for '.' and '/'. */
    assert_int_equal(canon("/%c0%ae%c0%ae/x", 0, out, NULL), SL_PATH_DOUBLE_ENCODED);
    assert_int_equal(canon("/a%c0%afb", 0, out, NULL), SL_PATH_DOUBLE_ENCODED);
    assert_int_equal(canon("/a\xc1\x9c" "b", 0, out, NULL), SL_PATH_DOUBLE_ENCODED);
    /* An encoded percent followed by anything else is just a percent. */
    assert_int_equal(canon("/100%25/off", 0, out, NULL), SL_PATH_OK);
    assert_string_equal(out, "/100%/off");
    assert_int_equal(canon("a/b", 0, out, NULL), SL_PATH_NOT_ABSOLUTE);
    assert_non_null(sl_path_strerror(SL_PATH_DOUBLE_ENCODED));
}

/* Non-ASCII bytes pass through untouched (and are never folded). */
static void test_utf8_kept(void **state)
{
    char out[64];
    (void)state;

    assert_int_equal(canon("/caf%C3%A9/\xc3\x89", SL_PATH_FOLD_CASE, out, NULL), SL_PATH_OK);
    assert_string_equal(out, "/caf\xc3\xa9/\xc3\x89");
}

/* ---- matching through the canonical form ---- */

static const char *no_header(void *ctx, const char *name)
{
    (void)ctx;
    (void)name;
    return NULL;
}

static size_t hits_for(const struct sl_config *c, const char *method,
                       const char *raw, const char *want_rule)
{
    char out[256];
    size_t n, found = 0;
    bool trailing;
    struct sl_check chk;
    const struct sl_upstream_conf *up = &c->upstreams[0];
    struct sl_call call;

    assert_int_equal(sl_path_canonical(raw, strlen(raw),
                                       up->path_case_sensitive ? 0 : SL_PATH_FOLD_CASE,
                                       out, &n, &trailing), SL_PATH_OK);
    call.method = method;
    call.path = out;
    call.path_len = n;
    call.header = no_header;
    call.header_ctx = NULL;
    call.trailing_slash = trailing;
    call.more = NULL;
    call.nmore = 0;
    assert_int_equal(sl_match(up, &call, &chk), 0);
    for (size_t i = 0; i < chk.nhits; i++)
        if (strcmp(chk.hits[i].rule->name, want_rule) == 0)
            found++;
    sl_check_clear(&chk);
    return found;
}

static void test_rules_cannot_be_dodged_by_spelling(void **state)
{
    const char *text =
        "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\", \"url\": \"http://x\","
        "\"rules\": ["
        "{\"name\": \"login\", \"methods\": [\"POST\"], \"path\": \"/api/v2*/Login\","
        " \"limit\": 1, \"window\": \"5m\"},"
        "{\"name\": \"dir\", \"path\": \"/files/*\", \"limit\": 1, \"window\": \"5m\"},"
        "{\"name\": \"lead\", \"path\": \"/p/{pub}/lead/{id}\", \"per\": \"{pub}\","
        " \"limit\": 1, \"window\": \"5m\"}]}]}";
    static const char *const logins[] = {
        "/api/v2/login", "/api/v2/login/", "//api/v2//login", "/api/v2/login;x=1",
        "/api%2Fv2/login", "/api\\v2\\login", "/API/V2/LOGIN", "/api/v2.1/login/",
        "/%61pi/v2/login", "/api/v2/login%3B",
    };
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;

    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    for (size_t i = 0; i < sizeof(logins) / sizeof(logins[0]); i++) {
        print_message("%s\n", logins[i]);
        assert_int_equal(hits_for(c, "POST", logins[i], "login"), 1);
        assert_int_equal(hits_for(c, "post", logins[i], "login"), 1);
        assert_int_equal(hits_for(c, "pOsT", logins[i], "login"), 1);
    }
    assert_int_equal(hits_for(c, "GET", "/api/v2/login", "login"), 0);
    /* The "files" rule (a star after "/files/") matches "/files/" too. */
    assert_int_equal(hits_for(c, "GET", "/files/", "dir"), 1);
    assert_int_equal(hits_for(c, "GET", "/files/a", "dir"), 1);
    assert_int_equal(hits_for(c, "GET", "/files//a/", "dir"), 1);
    assert_int_equal(hits_for(c, "GET", "/p/ACME/lead/7/", "lead"), 1);
    sl_config_free(c);
}

static void test_case_sensitive_upstream(void **state)
{
    const char *text =
        "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\", \"url\": \"http://x\","
        "\"path_case\": \"sensitive\", \"rules\": ["
        "{\"name\": \"login\", \"path\": \"/Login\", \"limit\": 1, \"window\": \"5m\"}]}]}";
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;

    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    assert_true(c->upstreams[0].path_case_sensitive);
    assert_int_equal(hits_for(c, "GET", "/Login", "login"), 1);
    assert_int_equal(hits_for(c, "GET", "//Login/", "login"), 1);
    assert_int_equal(hits_for(c, "GET", "/login", "login"), 0);
    sl_config_free(c);
}

static void expect_read(const char *raw, unsigned reading, const char *want, bool want_trailing)
{
    char out[256];
    size_t n;
    bool trailing;

    assert_int_equal(sl_path_read(raw, strlen(raw), reading, 0, out, &n, &trailing),
                     SL_PATH_OK);
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
    assert_int_equal(trailing, want_trailing);
}

static void test_readings(void **state)
{
    const unsigned all = SL_READ_CANONICAL;
    (void)state;

    expect_read("/a/x%2Fy", all, "/a/x/y", false);
    expect_read("/a/x%2fy", all & ~SL_READ_ENC_SLASH, "/a/x%2Fy", false);
    expect_read("/a/x\\y", all & ~SL_READ_BACKSLASH, "/a/x\\y", false);
    expect_read("/a/x%5cy", all & ~SL_READ_ENC_BSLASH, "/a/x\\y", false);
    expect_read("/a/x%5cy", all, "/a/x/y", false);
    expect_read("/a/;x", all, "/a", true);
    expect_read("/a/;x", all & ~SL_READ_PARAMS, "/a/;x", false);
    expect_read("/a;b/%3Bx", all & ~SL_READ_ENC_PARAMS, "/a/;x", false);
    expect_read("/a//b", all & ~SL_READ_MERGE, "/a//b", false);
    expect_read("/a//b/", all & ~SL_READ_MERGE, "/a//b", true);
    expect_read("", 0, "/", false);
    /* The canonical reading is the canonical form. */
    for (unsigned r = 0; r <= all; r++)
        expect_read("/x", r, "/x", false);
    assert_int_equal(sl_path_reading_bits("/a/b", 4), 0);
    assert_int_equal(sl_path_reading_bits("/a//b", 5), SL_READ_MERGE);
    assert_int_equal(sl_path_reading_bits("/a%2fb;c", 8),
                     SL_READ_ENC_SLASH | SL_READ_PARAMS | SL_READ_MERGE);
}

/* A rule that one reading matches is charged, with that reading's key. */
static void test_match_every_reading(void **state)
{
    const char *text =
        "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\", \"url\": \"http://x\","
        "\"rules\": ["
        "{\"name\": \"lead\", \"path\": \"/lead/{id}\", \"per\": \"{id}\","
        " \"limit\": 1, \"window\": \"5m\"},"
        "{\"name\": \"deep\", \"path\": \"/lead/*/*\", \"limit\": 1, \"window\": \"5m\"}]}]}";
    struct sl_errors e = {0};
    struct sl_config *c;
    struct sl_check chk;
    const char *raw = "/lead/x%2Fy";
    (void)state;

    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    assert_int_equal(sl_match_raw(&c->upstreams[0], "GET", raw, strlen(raw), no_header,
                                  NULL, &chk), 0);
    /* deep (split reading), lead with key "x%2fy" (folded), the pause. */
    assert_int_equal(chk.nhits, 3);
    assert_string_equal(chk.hits[0].rule->name, "lead");
    assert_string_equal(chk.hits[0].key, "x%2fy");
    assert_string_equal(chk.hits[1].rule->name, "deep");
    sl_check_clear(&chk);
    raw = "/lead/a";
    assert_int_equal(sl_match_raw(&c->upstreams[0], "GET", raw, strlen(raw), no_header,
                                  NULL, &chk), 0);
    assert_int_equal(chk.nhits, 2);
    assert_string_equal(chk.hits[0].key, "a");
    sl_check_clear(&chk);
    sl_config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spellings_of_one_endpoint),
        cmocka_unit_test(test_dot_segments_in_every_spelling),
        cmocka_unit_test(test_refused_encodings),
        cmocka_unit_test(test_utf8_kept),
        cmocka_unit_test(test_rules_cannot_be_dodged_by_spelling),
        cmocka_unit_test(test_case_sensitive_upstream),
        cmocka_unit_test(test_readings),
        cmocka_unit_test(test_match_every_reading),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
