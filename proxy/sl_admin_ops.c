/*
 * sl_admin_ops — see sl_admin_ops.h.
 *
 * An action's life: sl_admin creates it when the request's headers have
 * passed the listener's checks, feeds it the body, and runs it.  Running
 * reads the body (a JSON object, at most SL_OP_BODY_MAX bytes), finds the
 * upstream in the worker's configuration, and asks the worker's store
 * (sl_store_set_pause); the store's callback answers.  An action that
 * cannot be carried out (bad body, unknown upstream) is answered before
 * the store is asked.  Every answer is JSON, with "error" and a sentence
 * when nothing changed.
 *
 * "Never the wrong way": shortening never lengthens a pause and pausing by
 * hand never shortens one; the store compares with the pause in force at
 * the moment it acts (with Redis, on Redis's clock and for the fleet), and
 * an action that would change nothing is answered 409 and not announced.
 * One that changed something is logged (who: the client's address; what;
 * the state now) and announced once, by this instance, to the alert
 * receivers that want "operator" events; the store keeps the snapshots'
 * pause alert from announcing it a second time.  A pause that ends sooner
 * wakes the calls held for it: here at once, on other instances through
 * the store's room notice.
 *
 * The operator's reason is shown in /status, the page, logs and alerts:
 * it is bounded (SL_OP_REASON_MAX bytes) and may hold no control
 * character, so it cannot forge a log line; alerts escape it for chat.
 */
#include "sl_admin_ops.h"
#include "sl_buf.h"

#include "sl_admin.h"
#include "sl_alerts.h"
#include "sl_duration.h"
#include "sl_feedback.h"
#include "sl_log.h"
#include "sl_proxy.h"
#include "sl_time.h"
#include "sl_json.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define SL_OP_BODY_MAX 4096
#define SL_OP_REASON_MAX 80     /* bytes; leaves room in a pause's 96 */
#define SL_OP_MAX_US ((int64_t)SL_FEEDBACK_MAX_PAUSE_S * SL_USEC_PER_SEC)

struct sl_admin_op {
    struct sl_worker *w;
    const struct sl_config *config;     /* referenced: up points into it */
    const struct sl_upstream_conf *up;  /* once found */
    char *name;                         /* the path's upstream (owned) */
    bool bad_path;                      /* /upstreams/... but not NAME/pause */
    bool is_delete;
    struct sl_buf body;                 /* capped at SL_OP_BODY_MAX */
    enum sl_pause_action action;
    int64_t duration_us;
    char reason[SL_OP_REASON_MAX + 1];
    bool has_reason;
    char by[INET6_ADDRSTRLEN];          /* the client's address */
    sl_admin_op_done_fn done;
    void *done_arg;
};

static const char *const sl_op_names[] = {"pause", "shorten", "clear"};

bool sl_admin_op_path(const char *url)
{
    return strncmp(url, "/upstreams/", 11) == 0 || strcmp(url, "/upstreams") == 0;
}

bool sl_admin_op_method_ok(const char *method)
{
    return strcmp(method, "POST") == 0 || strcmp(method, "DELETE") == 0;
}

struct sl_admin_op *sl_admin_op_new(struct sl_worker *w, struct MHD_Connection *conn,
                                    const char *url, const char *method)
{
    struct sl_admin_op *op = calloc(1, sizeof(*op));
    const union MHD_ConnectionInfo *ci;
    const char *name = url + 11, *slash;

    if (op == NULL)
        return NULL;
    op->w = w;
    sl_buf_init(&op->body, SL_OP_BODY_MAX);
    op->is_delete = strcmp(method, "DELETE") == 0;
    slash = strlen(url) > 11 ? strchr(name, '/') : NULL;
    if (slash == NULL || slash == name || strcmp(slash, "/pause") != 0)
        op->bad_path = true;
    else if ((op->name = strndup(name, (size_t)(slash - name))) == NULL) {
        free(op);
        return NULL;
    }
    strcpy(op->by, "-");
    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci != NULL && ci->client_addr != NULL) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, op->by,
                      sizeof(op->by));
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, op->by,
                      sizeof(op->by));
    }
    return op;
}

void sl_admin_op_body(struct sl_admin_op *op, const char *data, size_t len)
{
    /* A failure (past the cap, or out of memory) is sticky and answered
     * as too large: nothing is done. */
    sl_buf_add(&op->body, data, len);
}

void sl_admin_op_free(struct sl_admin_op *op)
{
    if (op == NULL)
        return;
    if (op->config != NULL)
        sl_config_unref(op->config);
    free(op->name);
    sl_buf_free(&op->body);
    free(op);
}

/* ---- answers ---- */

/* Answer J (taken) with STATUS. */
static void sl_op_answer(struct sl_admin_op *op, unsigned status, json_t *j)
{
    char *text = j != NULL ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(15))
                           : NULL;
    struct MHD_Response *r = NULL;
    size_t n;

    json_decref(j);
    if (text != NULL) {
        n = strlen(text);
        text[n] = '\n';  /* json_dumps' NUL becomes the line's end */
        r = MHD_create_response_from_buffer(n + 1, text, MHD_RESPMEM_MUST_FREE);
        if (r == NULL) {
            free(text);
        } else {
            MHD_add_response_header(r, "Content-Type", "application/json");
            MHD_add_response_header(r, "Cache-Control", "no-store");
        }
    }
    op->done(op->done_arg, r, status);
}

/* A refusal: {"error": CODE, "message": the sentence} (and the pause now,
 * with PAUSE set). */
static void sl_op_refuse(struct sl_admin_op *op, unsigned status, const char *code,
                         json_t *pause, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void sl_op_refuse(struct sl_admin_op *op, unsigned status, const char *code,
                         json_t *pause, const char *fmt, ...)
{
    json_t *j = json_object();
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_object_set_new(j, "error", json_string(code));
    json_object_set_new(j, "message", sl_json_text(msg));
    if (pause != NULL)
        json_object_set_new(j, "paused", pause);
    sl_op_answer(op, status, j);
}

/* A pause of US µs as /status shows it, or null. */
static json_t *sl_op_pause_json(int64_t us, bool by_operator, const char *reason)
{
    double now = sl_time_wall(), until = now + (double)us / 1e6;
    char iso[32];
    json_t *p;

    if (us <= 0)
        return json_null();
    sl_time_iso(until + 0.999, iso, sizeof(iso));
    p = json_pack("{s:s,s:f,s:f}", "resumes_at", iso, "resumes_at_unix",
                  round(until * 1000) / 1000, "resumes_in",
                  round((double)us / 1000.0) / 1000.0);
    json_object_set_new(p, "set_by", json_string(by_operator ? "operator" : "provider"));
    json_object_set_new(p, "reason", sl_json_text(reason != NULL ? reason : ""));
    return p;
}

/* "604799.9s, set by the provider (status 429, Retry-After)" */
static void sl_op_describe(char *buf, size_t len, int64_t us, bool by_operator,
                           const char *reason)
{
    snprintf(buf, len, "%.1fs left, set by %s (%s)", (double)us / 1e6,
             by_operator ? "an operator" : "the provider",
             reason != NULL && reason[0] ? reason : "no reason given");
}

/* sl_pause_cb: the store acted (or could not). */
static void sl_op_acted(void *arg, const struct sl_pause_change *ch, const char *error)
{
    struct sl_admin_op *op = arg;
    const char *verb = sl_op_names[op->action];
    bool now_operator;
    const char *now_reason;
    char was[200];

    if (ch == NULL) {
        sl_warn("admin: %s asked to %s the pause of upstream %s: not done (%s)",
                op->by, verb, op->up->name, error != NULL ? error : "store error");
        sl_op_refuse(op, 503, "unavailable", NULL, "the pause of %s was not changed: "
                     "%s; try again", op->up->name, error != NULL ? error : "store error");
        return;
    }
    sl_op_describe(was, sizeof(was), ch->was_us, ch->was_operator, ch->was_reason);
    if (!ch->changed) {
        json_t *now = sl_op_pause_json(ch->was_us, ch->was_operator, ch->was_reason);
        sl_info("admin: %s asked to %s the pause of upstream %s: nothing to change "
                "(%s)", op->by, verb, op->up->name,
                ch->was_us > 0 ? was : "not paused");
        if (ch->was_us <= 0)
            sl_op_refuse(op, 409, "not_paused", now, "%s is not paused: there is "
                         "nothing to %s", op->up->name, verb);
        else if (op->action == SL_PAUSE_SET)
            sl_op_refuse(op, 409, "paused_longer", now, "%s is already paused for "
                         "longer (%s); pausing by hand never shortens a pause: "
                         "shorten it with {\"resume_in\": ...}", op->up->name, was);
        else
            sl_op_refuse(op, 409, "ends_sooner", now, "the pause of %s already ends "
                         "sooner (%s); shortening never lengthens a pause",
                         op->up->name, was);
        return;
    }
    now_operator = op->action == SL_PAUSE_SET || ch->was_operator;
    now_reason = op->action == SL_PAUSE_SET ? op->reason : ch->was_reason;
    if (op->action == SL_PAUSE_SET)
        sl_warn("admin: %s paused upstream %s by hand for %.1fs (%s)%s%s; calls "
                "wait or get 429 on every instance sharing the store", op->by,
                op->up->name, (double)ch->left_us / 1e6,
                op->reason[0] ? op->reason : "no reason given",
                ch->was_us > 0 ? "; it was paused: " : "", ch->was_us > 0 ? was : "");
    else if (op->action == SL_PAUSE_SHORTEN)
        sl_warn("admin: %s shortened the pause of upstream %s to %.1fs (it had %s)",
                op->by, op->up->name, (double)ch->left_us / 1e6, was);
    else
        sl_warn("admin: %s cleared the pause of upstream %s (it had %s): calls go "
                "through again on every instance sharing the store", op->by,
                op->up->name, was);
    /* Held calls here ask again now; other instances hear it from the
     * store (Redis's room notice). */
    if (op->action != SL_PAUSE_SET)
        sl_waitlists_room(op->w->proxy->waitlists, &op->up->pause_rule, "", 0);
    {
        struct sl_operator_action act = {
            .upstream = op->up->name, .action = verb, .by = op->by,
            .reason = op->action == SL_PAUSE_SET ? op->reason : NULL,
            .was_us = ch->was_us, .was_operator = ch->was_operator,
            .was_reason = ch->was_reason, .left_us = ch->left_us,
        };
        sl_alerts_operator(op->w->alerts, &act);
    }
    {
        json_t *j = json_object();
        json_object_set_new(j, "upstream", json_string(op->up->name));
        json_object_set_new(j, "action", json_string(verb));
        json_object_set_new(j, "by", json_string(op->by));
        json_object_set_new(j, "paused", sl_op_pause_json(ch->left_us, now_operator,
                                                          now_reason));
        json_object_set_new(j, "was", sl_op_pause_json(ch->was_us, ch->was_operator,
                                                       ch->was_reason));
        sl_op_answer(op, 200, j);
    }
}

/* ---- reading the request ---- */

/* A duration field: "30s" (as in the configuration) or seconds as a
 * number.  0, or -1 with *WHY set. */
static int sl_op_duration(json_t *v, int64_t *out, const char **why)
{
    if (json_is_string(v)) {
        if (sl_duration_parse(json_string_value(v), out) == 0)
            return 0;
    } else if (json_is_number(v)) {
        double s = json_number_value(v);
        if (s >= 0 && sl_duration_from_seconds(s, out) == 0)
            return 0;
    }
    *why = "must be a duration such as \"30s\", \"10m\" or \"2h\" (or seconds "
           "as a number)";
    return -1;
}

/* Read OP's body into its action.  0, or -1 (answered 400). */
static int sl_op_parse(struct sl_admin_op *op)
{
    static const char *const keys[] = {"for", "reason", "resume_in", "clear", NULL};
    const char *key, *why = NULL;
    json_error_t jerr;
    json_t *j, *v, *vfor, *vres, *vclear, *vreason;
    int n = 0;

    if (op->is_delete) {
        op->action = SL_PAUSE_CLEAR;
        return 0;
    }
    if (sl_buf_len(&op->body) == 0) {
        sl_op_refuse(op, 400, "bad_request", NULL, "the body must be a JSON object: "
                     "{\"for\": \"10m\", \"reason\": \"...\"} pauses, "
                     "{\"resume_in\": \"30s\"} shortens, {\"clear\": true} clears");
        return -1;
    }
    j = json_loadb(sl_buf_str(&op->body), sl_buf_len(&op->body), JSON_REJECT_DUPLICATES,
                   &jerr);
    if (j == NULL || !json_is_object(j)) {
        sl_op_refuse(op, 400, "bad_request", NULL, "the body must be a JSON object "
                     "(%s)", j == NULL ? jerr.text : "not an object");
        json_decref(j);
        return -1;
    }
    json_object_foreach(j, key, v) {
        size_t i;
        for (i = 0; keys[i] != NULL && strcmp(keys[i], key) != 0; i++)
            ;
        if (keys[i] == NULL) {
            sl_op_refuse(op, 400, "bad_request", NULL, "unknown key \"%.64s\": the "
                         "body takes \"for\" and \"reason\", \"resume_in\", or "
                         "\"clear\"", key);
            json_decref(j);
            return -1;
        }
    }
    vfor = json_object_get(j, "for");
    vres = json_object_get(j, "resume_in");
    vclear = json_object_get(j, "clear");
    vreason = json_object_get(j, "reason");
    n = (vfor != NULL) + (vres != NULL) + (vclear != NULL);
    if (n != 1) {
        why = "give exactly one of \"for\" (pause), \"resume_in\" (shorten) and "
              "\"clear\"";
    } else if (vreason != NULL && vfor == NULL) {
        why = "\"reason\" goes with \"for\" (a pause set by hand)";
    } else if (vclear != NULL) {
        if (!json_is_true(vclear))
            why = "\"clear\" must be true";
        op->action = SL_PAUSE_CLEAR;
    } else if (vres != NULL) {
        if (sl_op_duration(vres, &op->duration_us, &why) == 0)
            op->action = op->duration_us > 0 ? SL_PAUSE_SHORTEN : SL_PAUSE_CLEAR;
        else
            why = "\"resume_in\" must be a duration such as \"30s\" (\"0s\": now)";
    } else {
        op->action = SL_PAUSE_SET;
        if (sl_op_duration(vfor, &op->duration_us, &why) != 0)
            why = "\"for\" must be a duration such as \"10m\" or \"2h\"";
        else if (op->duration_us <= 0 || op->duration_us > SL_OP_MAX_US)
            why = "\"for\" must be more than 0 and at most 7 days (\"7d\"), the "
                  "bound of any pause";
    }
    if (why == NULL && vreason != NULL) {
        const char *s = json_is_string(vreason) ? json_string_value(vreason) : NULL;
        size_t len = s != NULL ? json_string_length(vreason) : 0;
        if (s == NULL || len > SL_OP_REASON_MAX || strlen(s) != len)
            why = "\"reason\" must be a string of at most 80 bytes";
        for (size_t i = 0; why == NULL && i < len; i++)
            if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
                why = "\"reason\" may not hold control characters (line breaks, tabs)";
        if (why == NULL) {
            memcpy(op->reason, s, len + 1);
            op->has_reason = true;
        }
    }
    json_decref(j);
    if (why != NULL) {
        sl_op_refuse(op, 400, "bad_request", NULL, "%s", why);
        return -1;
    }
    return 0;
}

void sl_admin_op_run(struct sl_admin_op *op, sl_admin_op_done_fn done, void *arg)
{
    op->done = done;
    op->done_arg = arg;
    if (op->bad_path) {
        sl_op_refuse(op, 404, "not_found", NULL, "operator actions are at "
                     "/upstreams/NAME/pause (POST or DELETE)");
        return;
    }
    if (sl_buf_result(&op->body) != 0) {
        sl_op_refuse(op, 413, "too_large", NULL, "the body may be at most %d bytes",
                     SL_OP_BODY_MAX);
        return;
    }
    op->config = sl_config_ref(op->w->config);
    op->up = sl_config_upstream(op->config, op->name);
    if (op->up == NULL) {
        sl_op_refuse(op, 404, "unknown_upstream", NULL, "there is no upstream "
                     "named \"%.64s\" in the configuration", op->name);
        return;
    }
    if (sl_op_parse(op) != 0)
        return;
    if (sl_store_set_pause(op->w->store, op->up, op->action, op->duration_us,
                           op->action == SL_PAUSE_SET ? op->reason : NULL,
                           sl_op_acted, op) != 0)
        sl_op_refuse(op, 503, "unavailable", NULL, "the store cannot act on %s now; "
                     "try again", op->up->name);
}
