/* Unit tests: provider presets (sl_preset.c) through the configuration
 * loader: placeholders, choose rows, defaults, overrides, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "sl_config.h"
#include "sl_duration.h"
#include "sl_preset.h"

static char dir[256];

static const char *toy =
    "{\"name\": \"toy\", \"title\": \"A toy provider\", \"sources\": [],"
    " \"parameters\": {"
    "   \"plan\": {\"description\": \"The plan.\", \"required\": true,"
    "              \"values\": [\"small\", \"big\", \"custom\"]},"
    "   \"daily\": {\"description\": \"Calls per day.\", \"required\": false,"
    "               \"type\": \"integer\"},"
    "   \"pause\": {\"description\": \"Pause.\", \"required\": false,"
    "               \"default\": \"7s\"},"
    "   \"zone\": {\"description\": \"Time zone.\", \"required\": false,"
    "              \"type\": \"timezone\", \"default\": \"UTC\"},"
    "   \"leak\": {\"description\": \"A rate.\", \"required\": false, \"type\": \"rate\"}},"
    " \"choose\": {\"plan\": {\"small\": {\"daily\": 100, \"burst\": 5},"
    "                        \"big\": {\"daily\": 1000, \"burst\": 50},"
    "                        \"custom\": {\"burst\": 20}}},"
    " \"upstream\": {"
    "   \"rules\": ["
    "     {\"name\": \"burst\", \"limit\": \"$burst\", \"window\": \"1s\"},"
    "     {\"name\": \"daily\", \"path\": \"/api/**\", \"limit\": \"$daily\","
    "      \"window\": \"1d\", \"reset\": \"calendar\", \"timezone\": \"$zone\"},"
    "     {\"name\": \"in-flight\", \"concurrency\": 4}],"
    "   \"limit_signals\": [{\"status\": 403, \"body_contains\": \"$not a placeholder\"}],"
    "   \"default_pause\": \"$pause\","
    "   \"retry_on_limit\": true},"
    " \"notes\": []}";

static void write_file(const char *name, const char *text)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/sl_preset_test.XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    write_file("toy.json", toy);
    write_file("misnamed.json", "{\"name\": \"other\", \"upstream\": {}}");
    write_file("greedy.json", "{\"name\": \"greedy\", \"upstream\": {\"url\": \"http://x\"}}");
    write_file("hole.json", "{\"name\": \"hole\", \"upstream\": "
                            "{\"rules\": [{\"name\": \"r\", \"limit\": \"$nowhere\", "
                            "\"window\": \"1s\"}]}}");
    write_file("broken.json", "{\"name\": \"broken\",");
    return 0;
}

static int teardown(void **state)
{
    char cmd[300];
    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A config with one upstream "u" whose extra keys are UPSTREAM_KEYS. */
static int load(const char *upstream_keys, struct sl_config **c, struct sl_errors *e)
{
    char text[4096];

    snprintf(text, sizeof(text),
             "{\"presets_dir\": \"%s\", \"upstreams\": [{\"name\": \"u\", "
             "\"prefix\": \"/u\", \"url\": \"https://example.com\", %s}]}",
             dir, upstream_keys);
    return sl_config_parse(text, "t", false, c, e);
}

static int has_error(const struct sl_errors *e, const char *needle)
{
    for (size_t i = 0; i < e->count; i++)
        if (strstr(e->lines[i], needle) != NULL)
            return 1;
    return 0;
}

static const struct sl_rule *rule(const struct sl_upstream_conf *u, const char *name)
{
    for (size_t i = 0; i < u->nrules; i++)
        if (strcmp(u->rules[i].name, name) == 0)
            return &u->rules[i];
    return NULL;
}

static void test_placeholders_choose_and_defaults(void **state)
{
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;

    assert_int_equal(load("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"big\"}",
                          &c, &e), 0);
    const struct sl_upstream_conf *u = &c->upstreams[0];
    assert_string_equal(u->preset, "toy");
    assert_int_equal(u->nrules, 3);
    /* "$burst" and "$daily" from the plan's choose row, as numbers. */
    assert_int_equal(rule(u, "burst")->limit, 50);
    assert_int_equal(rule(u, "daily")->limit, 1000);
    assert_int_equal(rule(u, "in-flight")->kind, SL_RULE_CONCURRENCY);
    /* "$pause" from the parameter's default. */
    assert_int_equal(u->default_pause_us, 7 * SL_USEC_PER_SEC);
    assert_true(u->retry_on_limit);
    /* Only whole-string identifiers are placeholders. */
    assert_string_equal(u->signals[0].body_contains, "$not a placeholder");
    assert_non_null(u->preset_report);
    assert_non_null(strstr(u->preset_report, "upstream u: preset \"toy\""));
    assert_non_null(strstr(u->preset_report, "plan=\"big\""));
    assert_non_null(strstr(u->preset_report, "added rule burst: {\"limit\": 50"));
    assert_non_null(strstr(u->preset_report, "overridden by you: nothing"));
    sl_config_free(c);

    /* A given parameter wins over the choose row. */
    assert_int_equal(load("\"preset\": \"toy\", \"preset_params\": "
                          "{\"plan\": \"small\", \"daily\": 42, \"zone\": \"+02:00\"}",
                          &c, &e), 0);
    assert_int_equal(rule(&c->upstreams[0], "daily")->limit, 42);
    assert_int_equal(rule(&c->upstreams[0], "burst")->limit, 5);
    sl_config_free(c);
    assert_int_equal(e.count, 0);
}

static void test_user_keys_override(void **state)
{
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;

    assert_int_equal(load("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"small\"},"
                          "\"default_pause\": \"2s\", \"limit_signals\": null,"
                          "\"rules\": [{\"name\": \"daily\", \"limit\": 7},"
                          "            {\"name\": \"in-flight\", \"concurrency\": 2},"
                          "            {\"name\": \"mine\", \"limit\": 3, \"window\": \"1m\"}]",
                          &c, &e), 0);
    const struct sl_upstream_conf *u = &c->upstreams[0];
    assert_int_equal(u->default_pause_us, 2 * SL_USEC_PER_SEC);
    assert_int_equal(u->nsignals, 0);
    assert_int_equal(u->nrules, 4);
    /* Merged by name: the limit changed, the path and window kept. */
    assert_int_equal(rule(u, "daily")->limit, 7);
    assert_string_equal(rule(u, "daily")->path_text, "/api/**");
    assert_int_equal(rule(u, "daily")->window_us, (int64_t)86400 * SL_USEC_PER_SEC);
    assert_int_equal(rule(u, "in-flight")->limit, 2);
    /* Preset rules first, in their order; the user's own after. */
    assert_string_equal(u->rules[0].name, "burst");
    assert_string_equal(u->rules[3].name, "mine");
    assert_non_null(strstr(u->preset_report,
                           "rules.daily.limit (preset: 100, yours: 7)"));
    assert_non_null(strstr(u->preset_report, "default_pause (preset: \"7s\", yours: \"2s\")"));
    assert_non_null(strstr(u->preset_report, "limit_signals (preset: "));
    assert_non_null(strstr(u->preset_report, "yours: removed)"));
    assert_non_null(strstr(u->preset_report, "your own rules: mine"));
    sl_config_free(c);

    /* null in a rule removes that key: the rule becomes a rate rule. */
    assert_int_equal(load("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"small\"},"
                          "\"rules\": [{\"name\": \"in-flight\", \"concurrency\": null,"
                          "             \"limit\": 9, \"window\": \"1s\"}]", &c, &e), 0);
    assert_int_equal(rule(&c->upstreams[0], "in-flight")->kind, SL_RULE_RATE);
    assert_int_equal(rule(&c->upstreams[0], "in-flight")->limit, 9);
    sl_config_free(c);
    assert_int_equal(e.count, 0);
}

static void expect_error(const char *keys, const char *needle)
{
    struct sl_errors e = {0};
    struct sl_config *c = NULL;

    assert_int_equal(load(keys, &c, &e), -1);
    assert_null(c);
    if (!has_error(&e, needle)) {
        for (size_t i = 0; i < e.count; i++)
            fprintf(stderr, "  got: %s\n", e.lines[i]);
        fail_msg("no error containing: %s", needle);
    }
    sl_errors_free(&e);
}

static void test_parameter_errors(void **state)
{
    (void)state;
    expect_error("\"preset\": \"toy\"",
                 "upstreams[0].preset_params.plan: is required by preset \"toy\": "
                 "one of \"small\", \"big\", \"custom\" (The plan.)");
    expect_error("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"huge\"}",
                 "upstreams[0].preset_params.plan: \"huge\" is not one of \"small\"");
    expect_error("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"big\", \"colour\": 1}",
                 "upstreams[0].preset_params.colour: unknown parameter of preset \"toy\" "
                 "(it takes plan, daily, pause, zone, leak)");
    expect_error("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"big\", \"daily\": \"9\"}",
                 "upstreams[0].preset_params.daily: \"9\" is not a whole number");
    expect_error("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"big\", \"daily\": 1.5}",
                 "upstreams[0].preset_params.daily: 1.5 is not a whole number");
    expect_error("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"big\", \"zone\": \"Nowhere/Land\"}",
                 "upstreams[0].preset_params.zone: \"Nowhere/Land\": no such time zone");
    expect_error("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"big\", \"leak\": \"2 per s\"}",
                 "upstreams[0].preset_params.leak: \"2 per s\" is not a rate such as \"2/s\"");
    /* The custom plan's row has no "daily": the user must give it. */
    expect_error("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"custom\"}",
                 "upstreams[0].preset_params.daily: is required by preset \"toy\" with "
                 "plan \"custom\": Calls per day.");
    expect_error("\"preset\": \"toy\", \"preset_params\": [1]",
                 "upstreams[0].preset_params: must be an object");
    expect_error("\"preset_params\": {\"plan\": \"big\"}",
                 "upstreams[0].preset_params: given without \"preset\"");
    expect_error("\"preset\": 5", "upstreams[0].preset: must be the name of a preset");
    /* Names echoed in errors never carry raw control bytes. */
    expect_error("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"big\", \"a\\u001bb\": 1}",
                 "upstreams[0].preset_params.a\\x1bb: unknown parameter");
}

static void test_names_and_files(void **state)
{
    (void)state;
    expect_error("\"preset\": \"../toy\"", "upstreams[0].preset: \"../toy\" is not a preset name");
    expect_error("\"preset\": \"a/b\"", "\"a/b\" is not a preset name");
    expect_error("\"preset\": \"..\"", "\"..\" is not a preset name");
    expect_error("\"preset\": \"x..y\"", "\"x..y\" is not a preset name");
    expect_error("\"preset\": \".hidden\"", "\".hidden\" is not a preset name");
    expect_error("\"preset\": \"\"", "\"\" is not a preset name");
    expect_error("\"preset\": \"nope\"", "upstreams[0].preset: no preset \"nope\" in ");
    expect_error("\"preset\": \"nope\"", "(there: broken, greedy, hole, misnamed, toy)");
    expect_error("\"preset\": \"misnamed\"", "\"name\" must be \"misnamed\", the file's name");
    expect_error("\"preset\": \"greedy\"", "upstream.url is the user's to give");
    expect_error("\"preset\": \"hole\"", "uses \"$nowhere\", which no parameter");
    expect_error("\"preset\": \"broken\"", "broken.json:1:");
}

static void test_errors_in_what_a_preset_filled_in(void **state)
{
    struct sl_errors e = {0};
    struct sl_config *c = NULL;
    (void)state;

    /* A figure overridden with a bad value is reported where it lands,
     * and the preset is named. */
    assert_int_equal(load("\"preset\": \"toy\", \"preset_params\": {\"plan\": \"big\"},"
                          "\"rules\": [{\"name\": \"burst\", \"window\": \"soon\"}]",
                          &c, &e), -1);
    assert_true(has_error(&e, "upstreams[0].rules[0].window"));
    assert_true(has_error(&e, "upstreams[0]: the errors above may be in what preset "
                              "\"toy\" filled in"));
    sl_errors_free(&e);
    /* A failed preset does not add errors about rules meant to adjust it. */
    assert_int_equal(load("\"preset\": \"toy\", \"rules\": [{\"name\": \"daily\", \"limit\": 7}]",
                          &c, &e), -1);
    assert_int_equal(e.count, 1);
    sl_errors_free(&e);
}

static void test_no_preset_is_untouched(void **state)
{
    json_t *u = json_pack("{s:s, s:[]}", "name", "x", "rules");
    char *report = (char *)"set";
    struct sl_errors e = {0};
    json_t *x;
    (void)state;

    x = sl_preset_expand(u, "upstreams[0]", dir, &report, &e);
    assert_ptr_equal(x, u);
    assert_null(report);
    assert_int_equal(e.count, 0);
    json_decref(x);
    json_decref(u);
}

/* The shipped presets load, those that use leaky buckets, costs and
 * settlement too. */
static void test_shipped_presets(void **state)
{
    static const struct {
        const char *name, *params, *refused;
    } cases[] = {
        {"salesforce", "{\"org_type\": \"production\", \"daily_allocation\": 115000}", NULL},
        {"hubspot", "{\"tier\": \"professional\", \"timezone\": \"Europe/Berlin\"}", NULL},
        {"zendesk", "{\"plan\": \"enterprise\"}", NULL},
        {"slack", "{\"distribution\": \"unlisted\"}", NULL},
        {"leadplatform", "{}", NULL},
        {"github", "{\"token_kind\": \"user\"}", NULL},
        {"shopify-rest", "{\"plan\": \"plus\"}", NULL},
        {"shopify-graphql", "{\"plan\": \"plus\", \"bucket\": 20000}", NULL},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[1024];
        struct sl_errors e = {0};
        struct sl_config *c = NULL;
        snprintf(text, sizeof(text),
                 "{\"presets_dir\": \"%s\", \"upstreams\": [{\"name\": \"u\", "
                 "\"prefix\": \"/u\", \"url\": \"https://example.com\", "
                 "\"preset\": \"%s\", \"preset_params\": %s}]}",
                 SOURCE_PRESETS_DIR, cases[i].name, cases[i].params);
        int rc = sl_config_parse(text, "t", false, &c, &e);
        if (cases[i].refused == NULL) {
            for (size_t k = 0; k < e.count; k++)
                fprintf(stderr, "  %s: %s\n", cases[i].name, e.lines[k]);
            assert_int_equal(rc, 0);
            assert_string_equal(c->upstreams[0].preset, cases[i].name);
        } else {
            assert_int_equal(rc, -1);
            assert_true(has_error(&e, cases[i].refused));
        }
        sl_config_free(c);
        sl_errors_free(&e);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_placeholders_choose_and_defaults),
        cmocka_unit_test(test_user_keys_override),
        cmocka_unit_test(test_parameter_errors),
        cmocka_unit_test(test_names_and_files),
        cmocka_unit_test(test_errors_in_what_a_preset_filled_in),
        cmocka_unit_test(test_no_preset_is_untouched),
        cmocka_unit_test(test_shipped_presets),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
