/*
 * Tests: the Redis link against real redis-server processes it starts on
 * free loopback ports -- plain, TLS with a private CA made with the
 * openssl command into a temporary directory, TLS requiring a client
 * certificate, and an ACL user -- driven by a small poll() loop that
 * implements struct sl_loop.  What an owner relies on is asserted: replies
 * and their order, Redis's own error texts, the certificate's reason, the
 * deadline on a stopped server, a server killed mid-pipeline, pushed
 * messages, and every callback called exactly once.
 *
 * Needs redis-server (built with TLS, as Debian's is) and openssl on PATH.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_redis_link.h"
#include "sl_store.h"
#include "sl_time.h"

/* ---- a poll() loop implementing struct sl_loop ---- */

#define MAX_WATCH 16

struct watch {
    int fd;
    bool r, w;
    sl_io_cb cb;
    void *arg;
};

static struct watch watches[MAX_WATCH];
static int nwatches;

static int loop_watch(void *ctx, int fd, bool r, bool w, sl_io_cb cb, void *arg)
{
    (void)ctx;
    for (int i = 0; i < nwatches; i++) {
        if (watches[i].fd == fd) {
            watches[i] = (struct watch){fd, r, w, cb, arg};
            return 0;
        }
    }
    if (nwatches == MAX_WATCH)
        return -1;
    watches[nwatches++] = (struct watch){fd, r, w, cb, arg};
    return 0;
}

static void loop_unwatch(void *ctx, int fd)
{
    (void)ctx;
    for (int i = 0; i < nwatches; i++) {
        if (watches[i].fd == fd) {
            watches[i] = watches[--nwatches];
            return;
        }
    }
    fail_msg("unwatch of fd %d, which is not watched", fd);
}

static const struct sl_loop test_loop = {NULL, loop_watch, loop_unwatch, NULL};

/* One pass: poll up to WAIT_MS, dispatch, then run the links' deadlines. */
static void loop_once(struct sl_redis_link **links, int nlinks, int wait_ms)
{
    struct pollfd pfd[MAX_WATCH];
    int n = nwatches;

    for (int i = 0; i < n; i++) {
        pfd[i].fd = watches[i].fd;
        pfd[i].events = (short)((watches[i].r ? POLLIN : 0) | (watches[i].w ? POLLOUT : 0));
        pfd[i].revents = 0;
    }
    if (poll(pfd, (nfds_t)n, wait_ms) > 0) {
        for (int i = 0; i < n; i++) {
            bool r = pfd[i].revents & (POLLIN | POLLHUP | POLLERR);
            bool w = pfd[i].revents & (POLLOUT | POLLHUP | POLLERR);
            if (!r && !w)
                continue;
            /* A callback may have dropped or replaced watches. */
            for (int k = 0; k < nwatches; k++) {
                if (watches[k].fd == pfd[i].fd) {
                    watches[k].cb(watches[k].arg, r && watches[k].r, w && watches[k].w);
                    break;
                }
            }
        }
    }
    for (int i = 0; i < nlinks; i++)
        if (links[i] != NULL)
            sl_redis_link_check(links[i], sl_time_mono_ms());
}

/* Run until *FLAG is set or TIMEOUT_MS passed.  Returns *FLAG. */
static bool run_until(struct sl_redis_link **links, int nlinks, const int *flag,
                      int timeout_ms)
{
    int64_t end = sl_time_mono_ms() + timeout_ms;

    while (!*flag && sl_time_mono_ms() < end)
        loop_once(links, nlinks, 10);
    return *flag != 0;
}

/* ---- servers ---- */

static char tmpdir[64];

/* Every server started, killed at the end even when a test failed. */
#define MAX_SERVERS 32
static pid_t started[MAX_SERVERS];

struct server {
    pid_t pid;
    int port;
};

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static bool port_open(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    bool ok;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* Start redis-server with EXTRA (NULL-terminated); TLS: the port is its
 * TLS port, with the certificates in tmpdir. */
static struct server start_redis(bool tls, bool client_certs, const char *const *extra)
{
    struct server s = {.port = free_port()};
    char port[16], log[128], cert[128], key[128], ca[128];
    const char *argv[64];
    int argc = 0;

    snprintf(port, sizeof(port), "%d", s.port);
    snprintf(log, sizeof(log), "%s/redis-%d.log", tmpdir, s.port);
    snprintf(cert, sizeof(cert), "%s/server.crt", tmpdir);
    snprintf(key, sizeof(key), "%s/server.key", tmpdir);
    snprintf(ca, sizeof(ca), "%s/ca.crt", tmpdir);
    argv[argc++] = "redis-server";
    argv[argc++] = "--bind";
    argv[argc++] = "127.0.0.1";
    if (tls) {
        argv[argc++] = "--port";
        argv[argc++] = "0";
        argv[argc++] = "--tls-port";
        argv[argc++] = port;
        argv[argc++] = "--tls-cert-file";
        argv[argc++] = cert;
        argv[argc++] = "--tls-key-file";
        argv[argc++] = key;
        argv[argc++] = "--tls-ca-cert-file";
        argv[argc++] = ca;
        argv[argc++] = "--tls-auth-clients";
        argv[argc++] = client_certs ? "yes" : "no";
    } else {
        argv[argc++] = "--port";
        argv[argc++] = port;
    }
    argv[argc++] = "--save";
    argv[argc++] = "";
    argv[argc++] = "--appendonly";
    argv[argc++] = "no";
    argv[argc++] = "--dir";
    argv[argc++] = tmpdir;
    argv[argc++] = "--logfile";
    argv[argc++] = log;
    for (int i = 0; extra != NULL && extra[i] != NULL; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;

    s.pid = fork();
    assert_true(s.pid >= 0);
    if (s.pid == 0) {
        /* Not the test's stdout: a server outliving a failed test must
         * not hold a pipe reading it open. */
        int null = open("/dev/null", O_RDWR);
        dup2(null, 1);
        dup2(null, 2);
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 500 && !port_open(s.port); i++) {
        int st;
        if (waitpid(s.pid, &st, WNOHANG) == s.pid)
            fail_msg("redis-server exited (see %s)", log);
        usleep(10000);
    }
    assert_true(port_open(s.port));
    for (int i = 0; i < MAX_SERVERS; i++) {
        if (started[i] == 0) {
            started[i] = s.pid;
            break;
        }
    }
    return s;
}

static void stop_redis(struct server *s)
{
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGCONT);
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    for (int i = 0; i < MAX_SERVERS; i++)
        if (started[i] == s->pid)
            started[i] = 0;
    s->pid = 0;
}

/* ---- what callbacks saw ---- */

struct status {
    int connects, disconnects;
    int status;
    char reason[256];
    int up;             /* on_connect said OK */
    int done;           /* on_connect failed, or on_disconnect */
};

static void on_connect(struct sl_redis_link *link, int status, const char *reason, void *arg)
{
    struct status *st = arg;
    (void)link;
    st->connects++;
    st->status = status;
    snprintf(st->reason, sizeof(st->reason), "%s", reason ? reason : "");
    if (status == SL_REDIS_LINK_OK) {
        assert_null(reason);
        st->up = 1;
    } else {
        assert_non_null(reason);
        st->done = 1;
    }
}

static void on_disconnect(struct sl_redis_link *link, int status, const char *reason,
                          void *arg)
{
    struct status *st = arg;
    (void)link;
    st->disconnects++;
    st->status = status;
    snprintf(st->reason, sizeof(st->reason), "%s", reason);
    st->done = 1;
}

struct answer {
    int calls;
    int type;           /* REDIS_REPLY_*, or 0 for a NULL reply */
    long long integer;
    char str[256];
    size_t elements;
    char elem[4][64];
    int *order;         /* when set: this answer's rank is recorded */
    int *counter;
};

static void on_reply(struct sl_redis_link *link, struct redisReply *rep, void *privdata)
{
    struct answer *a = privdata;
    (void)link;
    a->calls++;
    a->type = rep ? rep->type : 0;
    if (rep == NULL)
        return;
    a->integer = rep->integer;
    if (rep->str != NULL)
        snprintf(a->str, sizeof(a->str), "%.*s", (int)rep->len, rep->str);
    a->elements = rep->type == REDIS_REPLY_ARRAY ? rep->elements : 0;
    for (size_t i = 0; i < a->elements && i < 4; i++) {
        const redisReply *e = rep->element[i];
        if (e->type == REDIS_REPLY_INTEGER)
            snprintf(a->elem[i], sizeof(a->elem[i]), "%lld", e->integer);
        else if (e->str != NULL)
            snprintf(a->elem[i], sizeof(a->elem[i]), "%.*s", (int)e->len, e->str);
    }
    if (a->order != NULL)
        *a->order = (*a->counter)++;
}

static struct sl_redis_link_conf conf_for(const struct server *s)
{
    return (struct sl_redis_link_conf){.host = "127.0.0.1", .port = s->port,
                                       .timeout_ms = 2000};
}

static struct sl_redis_link *connect_link(const struct sl_redis_link_conf *conf,
                                          struct status *st)
{
    struct sl_redis_link_cbs cbs = {on_connect, on_disconnect, NULL, st};
    char why[256];
    struct sl_redis_link *link = sl_redis_link_new(conf, &test_loop, &cbs, why, sizeof(why));

    if (link == NULL)
        fail_msg("sl_redis_link_new: %s", why);
    return link;
}

static int cmd(struct sl_redis_link *link, struct answer *a, int argc, ...)
{
    const char *argv[16];
    va_list ap;

    va_start(ap, argc);
    for (int i = 0; i < argc; i++)
        argv[i] = va_arg(ap, const char *);
    va_end(ap);
    return sl_redis_link_command(link, argc, argv, NULL, on_reply, a);
}

/* ---- tests ---- */

static void test_commands(void **state)
{
    struct server s = start_redis(false, false, NULL);
    struct sl_redis_link_conf conf = conf_for(&s);
    struct status st = {0};
    struct answer ping = {0}, set = {0}, get = {0}, eval = {0}, other = {0};
    struct sl_redis_link *link;
    (void)state;

    conf.db = 2;
    link = connect_link(&conf, &st);
    /* Queued before the link is up: written behind SELECT, in order. */
    assert_int_equal(cmd(link, &ping, 1, "PING"), 0);
    assert_int_equal(cmd(link, &set, 3, "SET", "k", "v"), 0);
    assert_int_equal(cmd(link, &get, 2, "GET", "k"), 0);
    assert_int_equal(cmd(link, &eval, 5, "EVAL", "return {KEYS[1], ARGV[1], 7}", "1",
                         "key", "arg"), 0);
    assert_int_equal(sl_redis_link_pending(link), 4);
    assert_true(run_until(&link, 1, &eval.calls, 3000));
    assert_int_equal(st.connects, 1);
    assert_true(st.up);
    assert_int_equal(sl_redis_link_state(link), SL_REDIS_LINK_UP);
    assert_int_equal(ping.calls, 1);
    assert_int_equal(ping.type, REDIS_REPLY_STATUS);
    assert_string_equal(ping.str, "PONG");
    assert_int_equal(set.type, REDIS_REPLY_STATUS);
    assert_string_equal(set.str, "OK");
    assert_int_equal(get.type, REDIS_REPLY_STRING);
    assert_string_equal(get.str, "v");
    assert_int_equal(eval.type, REDIS_REPLY_ARRAY);
    assert_int_equal(eval.elements, 3);
    assert_string_equal(eval.elem[0], "key");
    assert_string_equal(eval.elem[1], "arg");
    assert_string_equal(eval.elem[2], "7");
    assert_int_equal(sl_redis_link_pending(link), 0);

    /* The key is in database 2, not 0. */
    {
        struct sl_redis_link_conf c0 = conf_for(&s);
        struct status st0 = {0};
        struct answer g0 = {0};
        struct sl_redis_link *l0 = connect_link(&c0, &st0);
        assert_int_equal(cmd(l0, &g0, 2, "GET", "k"), 0);
        assert_true(run_until(&l0, 1, &g0.calls, 3000));
        assert_int_equal(g0.type, REDIS_REPLY_NIL);
        sl_redis_link_free(l0);
    }

    /* An error reply is a reply, not a failure. */
    assert_int_equal(cmd(link, &other, 2, "INCR", "k"), 0);
    assert_true(run_until(&link, 1, &other.calls, 3000));
    assert_int_equal(other.type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(other.str, "not an integer"));
    assert_int_equal(sl_redis_link_state(link), SL_REDIS_LINK_UP);

    /* A binary argument goes through whole. */
    {
        const char *argv[] = {"SET", "bin", "a\0b\r\nc"};
        const size_t lens[] = {3, 3, 6};
        struct answer b = {0}, g = {0};
        assert_int_equal(sl_redis_link_command(link, 3, argv, lens, on_reply, &b), 0);
        assert_int_equal(cmd(link, &g, 2, "STRLEN", "bin"), 0);
        assert_true(run_until(&link, 1, &g.calls, 3000));
        assert_int_equal(g.integer, 6);
    }
    sl_redis_link_free(link);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.disconnects, 0);  /* not for a free */
    assert_int_equal(nwatches, 0);

    /* A database that does not exist: SELECT's own error, as a failed
     * connect. */
    conf.db = 100000;
    st = (struct status){0};
    ping = (struct answer){0};
    link = connect_link(&conf, &st);
    assert_int_equal(cmd(link, &ping, 1, "PING"), 0);
    assert_true(run_until(&link, 1, &st.done, 3000));
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.status, SL_REDIS_LINK_ERR_REFUSED);
    assert_non_null(strstr(st.reason, "SELECT"));
    assert_non_null(strstr(st.reason, "DB index is out of range"));
    assert_int_equal(ping.calls, 1);
    assert_int_equal(ping.type, 0);
    assert_int_equal(sl_redis_link_state(link), SL_REDIS_LINK_DEAD);
    assert_int_equal(cmd(link, &ping, 1, "PING"), -1);
    assert_int_equal(nwatches, 0);
    sl_redis_link_free(link);
    assert_int_equal(ping.calls, 1);
    stop_redis(&s);
}

static int seen_in_order;

static void on_counted(struct sl_redis_link *link, struct redisReply *rep, void *privdata)
{
    long long expect = (long long)(intptr_t)privdata;
    (void)link;
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    assert_int_equal(rep->integer, expect);
    assert_int_equal(seen_in_order + 1, expect);
    seen_in_order++;
}

static void test_pipeline(void **state)
{
    struct server s = start_redis(false, false, NULL);
    struct sl_redis_link_conf conf = conf_for(&s);
    struct status st = {0};
    struct answer last = {0};
    struct sl_redis_link *link = connect_link(&conf, &st);
    (void)state;

    assert_true(run_until(&link, 1, &st.up, 3000));
    seen_in_order = 0;
    for (intptr_t i = 1; i <= 1000; i++) {
        const char *argv[] = {"INCR", "counter"};
        assert_int_equal(sl_redis_link_command(link, 2, argv, NULL, on_counted, (void *)i), 0);
    }
    assert_int_equal(cmd(link, &last, 2, "GET", "counter"), 0);
    assert_int_equal(sl_redis_link_pending(link), 1001);
    assert_int_equal(sl_redis_link_flush(link), 0);
    assert_true(run_until(&link, 1, &last.calls, 5000));
    assert_int_equal(seen_in_order, 1000);
    assert_string_equal(last.str, "1000");
    sl_redis_link_free(link);
    stop_redis(&s);
}

/* The watch a link has asked for, or -1 for neither. */
static int watched_for_write(const struct sl_redis_link *link, int fd)
{
    (void)link;
    for (int i = 0; i < nwatches; i++)
        if (watches[i].fd == fd)
            return watches[i].w;
    return -1;
}

/* Corked, commands leave the watch alone; uncorking writes them and sets
 * it once.  sl_redis_link_read() hands out what has arrived without the
 * loop. */
static void test_cork_and_read(void **state)
{
    struct server s = start_redis(false, false, NULL);
    struct sl_redis_link_conf conf = conf_for(&s);
    struct status st = {0};
    struct answer a = {0}, b = {0};
    struct sl_redis_link *link = connect_link(&conf, &st);
    int fd;
    (void)state;

    assert_true(run_until(&link, 1, &st.up, 3000));
    assert_int_equal(nwatches, 1);
    fd = watches[0].fd;
    assert_int_equal(watched_for_write(link, fd), 0);
    sl_redis_link_cork(link);
    assert_int_equal(cmd(link, &a, 3, "SET", "k", "v"), 0);
    assert_int_equal(cmd(link, &b, 2, "GET", "k"), 0);
    /* Not asked for writability: nothing went out yet. */
    assert_int_equal(watched_for_write(link, fd), 0);
    assert_int_equal(sl_redis_link_uncork(link), 0);
    /* Written at once (a small write fits the socket): still no write watch. */
    assert_int_equal(watched_for_write(link, fd), 0);
    /* The replies, read without the loop, once they are here. */
    for (int i = 0; i < 300 && b.calls == 0; i++) {
        assert_int_equal(sl_redis_link_read(link), 0);
        if (b.calls == 0)
            usleep(10000);
    }
    assert_int_equal(a.calls, 1);
    assert_string_equal(a.str, "OK");
    assert_int_equal(b.calls, 1);
    assert_string_equal(b.str, "v");
    /* Nothing arrived: nothing happens. */
    assert_int_equal(sl_redis_link_read(link), 0);
    assert_int_equal(sl_redis_link_pending(link), 0);
    sl_redis_link_free(link);
    stop_redis(&s);
}

static void test_acl(void **state)
{
    static const char *const extra[] = {"--user", "app", "on", ">app pass", "~*", "&*",
                                        "+@all", NULL};
    struct server s = start_redis(false, false, extra);
    struct sl_redis_link_conf conf = conf_for(&s);
    struct status st = {0};
    struct answer who = {0}, ping = {0};
    struct sl_redis_link *link;
    (void)state;

    conf.user = "app";
    conf.password = "app pass";
    link = connect_link(&conf, &st);
    assert_int_equal(cmd(link, &who, 2, "ACL", "WHOAMI"), 0);
    assert_true(run_until(&link, 1, &who.calls, 3000));
    assert_true(st.up);
    assert_string_equal(who.str, "app");

    /* A user made at run time (ACL SETUSER), allowed some keys and
     * commands only: a refusal is a reply with Redis's text, the link
     * stays up. */
    {
        struct answer made = {0}, ok = {0}, denied = {0};
        struct sl_redis_link_conf lc = conf_for(&s);
        struct status lst = {0};
        struct sl_redis_link *limited;
        assert_int_equal(cmd(link, &made, 8, "ACL", "SETUSER", "limited", "on", ">lim pw",
                             "~lim:*", "+get", "+set"), 0);
        assert_true(run_until(&link, 1, &made.calls, 3000));
        assert_string_equal(made.str, "OK");
        lc.user = "limited";
        lc.password = "lim pw";
        limited = connect_link(&lc, &lst);
        assert_int_equal(cmd(limited, &ok, 3, "SET", "lim:a", "1"), 0);
        assert_int_equal(cmd(limited, &denied, 3, "SET", "other", "1"), 0);
        assert_true(run_until(&limited, 1, &denied.calls, 3000));
        assert_true(lst.up);
        assert_string_equal(ok.str, "OK");
        assert_int_equal(denied.type, REDIS_REPLY_ERROR);
        assert_non_null(strstr(denied.str, "NOPERM"));
        assert_int_equal(sl_redis_link_state(limited), SL_REDIS_LINK_UP);
        sl_redis_link_free(limited);
    }
    sl_redis_link_free(link);

    /* A wrong password: Redis's words, and the command queued behind it
     * is answered NULL. */
    conf.password = "wrong";
    st = (struct status){0};
    link = connect_link(&conf, &st);
    assert_int_equal(cmd(link, &ping, 1, "PING"), 0);
    assert_true(run_until(&link, 1, &st.done, 3000));
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.status, SL_REDIS_LINK_ERR_REFUSED);
    assert_non_null(strstr(st.reason, "AUTH"));
    assert_non_null(strstr(st.reason, "WRONGPASS invalid username-password pair"));
    assert_int_equal(ping.calls, 1);
    assert_int_equal(ping.type, 0);
    sl_redis_link_free(link);

    /* AUTH with a password alone is for the default user (who has none
     * here): Redis's own sentence again. */
    conf.user = NULL;
    conf.password = "app pass";
    st = (struct status){0};
    link = connect_link(&conf, &st);
    assert_true(run_until(&link, 1, &st.done, 3000));
    assert_int_equal(st.status, SL_REDIS_LINK_ERR_REFUSED);
    assert_non_null(strstr(st.reason, "ERR"));
    sl_redis_link_free(link);
    stop_redis(&s);
}

static void make_certs(void)
{
    char cmdline[4096];

    snprintf(cmdline, sizeof(cmdline),
             "set -e; cd %s; exec >openssl.log 2>&1;"
             "K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';"
             "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=sluice-test-ca;"
             "openssl req -x509 $K -keyout other-ca.key -out other-ca.crt -days 2 "
             "  -subj /CN=another-ca;"
             "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' >server.ext;"
             "openssl req -new $K -keyout server.key -out server.csr -subj /CN=localhost;"
             "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
             "  -out server.crt -days 2 -extfile server.ext;"
             "openssl req -new $K -keyout client.key -out client.csr -subj /CN=sluice;"
             "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
             "  -out client.crt -days 2;"
             "chmod 644 *.key",
             tmpdir);
    if (system(cmdline) != 0)
        fail_msg("openssl could not make the test certificates (see %s/openssl.log)",
                 tmpdir);
}

static struct sl_redis_tls *tls_with(const char *ca, const char *cert, const char *key,
                                     const char *server_name)
{
    char ca_path[128], cert_path[128], key_path[128], why[256];
    struct sl_redis_tls_conf c = {0};
    struct sl_redis_tls *tls;

    snprintf(ca_path, sizeof(ca_path), "%s/%s", tmpdir, ca);
    snprintf(cert_path, sizeof(cert_path), "%s/%s", tmpdir, cert ? cert : "");
    snprintf(key_path, sizeof(key_path), "%s/%s", tmpdir, key ? key : "");
    c.ca_file = ca_path;
    c.cert_file = cert ? cert_path : NULL;
    c.key_file = key ? key_path : NULL;
    c.server_name = server_name;
    tls = sl_redis_tls_new(&c, why, sizeof(why));
    if (tls == NULL)
        fail_msg("sl_redis_tls_new: %s", why);
    return tls;
}

/* Connect with TLS; returns the status the connect callback got. */
static int tls_connect(const struct server *s, struct sl_redis_tls *tls, struct status *st,
                       struct answer *a)
{
    struct sl_redis_link_conf conf = conf_for(s);
    struct sl_redis_link *link;

    conf.tls = tls;
    *st = (struct status){0};
    *a = (struct answer){0};
    link = connect_link(&conf, st);
    sl_redis_tls_free(tls);  /* the link keeps what it needs */
    assert_int_equal(cmd(link, a, 3, "SET", "tls", "yes"), 0);
    run_until(&link, 1, &a->calls, 5000);
    assert_int_equal(a->calls, 1);
    assert_int_equal(st->connects, 1);
    sl_redis_link_free(link);
    assert_int_equal(a->calls, 1);
    return st->status;
}

static void test_tls(void **state)
{
    struct server s = start_redis(true, false, NULL);
    struct status st;
    struct answer a;
    char why[256];
    (void)state;

    /* The right CA. */
    assert_int_equal(tls_connect(&s, tls_with("ca.crt", NULL, NULL, NULL), &st, &a),
                     SL_REDIS_LINK_OK);
    assert_int_equal(a.type, REDIS_REPLY_STATUS);
    assert_string_equal(a.str, "OK");
    /* By name, verified against the certificate's DNS name. */
    assert_int_equal(tls_connect(&s, tls_with("ca.crt", NULL, NULL, "localhost"), &st, &a),
                     SL_REDIS_LINK_OK);

    /* Another CA: the verify error, named. */
    assert_int_equal(tls_connect(&s, tls_with("other-ca.crt", NULL, NULL, NULL), &st, &a),
                     SL_REDIS_LINK_ERR_TLS);
    assert_int_equal(a.type, 0);
    /* redis-server sends its CA along (OpenSSL builds the chain from its
     * tls-ca-cert-file), so the chain ends in a root nobody here trusts. */
    assert_non_null(strstr(st.reason, "certificate of 127.0.0.1:"));
    assert_non_null(strstr(st.reason, "was not accepted: self-signed certificate in "
                                      "certificate chain"));

    /* The right CA, the wrong name. */
    assert_int_equal(tls_connect(&s, tls_with("ca.crt", NULL, NULL, "db.example.com"), &st,
                                 &a),
                     SL_REDIS_LINK_ERR_TLS);
    assert_non_null(strstr(st.reason, "hostname mismatch"));

    /* A pipeline far bigger than the socket buffers, over TLS: partial
     * writes, SSL_write repeated after WANT_WRITE, the buffer growing
     * while a write waits; every value read back whole, in order. */
    {
        struct sl_redis_link_conf conf = conf_for(&s);
        struct status bst = {0};
        struct sl_redis_link *link;
        static struct answer set[64], got[64];
        size_t big = 256 * 1024;
        char *value = malloc(big);
        assert_non_null(value);
        conf.tls = tls_with("ca.crt", NULL, NULL, NULL);
        conf.timeout_ms = 10000;
        link = connect_link(&conf, &bst);
        sl_redis_tls_free(conf.tls);
        for (int i = 0; i < 64; i++) {
            char key[16];
            const char *argv[] = {"SET", key, value};
            size_t lens[] = {3, 0, big};
            memset(value, 'a' + i % 26, big);
            snprintf(key, sizeof(key), "big%d", i);
            lens[1] = strlen(key);
            assert_int_equal(sl_redis_link_command(link, 3, argv, lens, on_reply, &set[i]), 0);
            if (i % 8 == 0)
                loop_once(&link, 1, 0);  /* some written while more is queued */
        }
        for (int i = 0; i < 64; i++) {
            char key[16];
            snprintf(key, sizeof(key), "big%d", i);
            assert_int_equal(cmd(link, &got[i], 2, "STRLEN", key), 0);
        }
        assert_true(run_until(&link, 1, &got[63].calls, 10000));
        for (int i = 0; i < 64; i++) {
            assert_int_equal(set[i].calls, 1);
            assert_string_equal(set[i].str, "OK");
            assert_int_equal(got[i].calls, 1);
            assert_int_equal(got[i].integer, (long long)big);
        }
        {
            struct answer g = {0};
            assert_int_equal(cmd(link, &g, 4, "GETRANGE", "big63", "262140", "262143"), 0);
            assert_true(run_until(&link, 1, &g.calls, 3000));
            assert_string_equal(g.str, "llll");
        }
        free(value);
        sl_redis_link_free(link);
    }

    /* Plain TCP to a TLS port: no reply ever makes sense of it. */
    {
        struct sl_redis_link_conf conf = conf_for(&s);
        struct status ps = {0};
        struct sl_redis_link *link;
        conf.timeout_ms = 300;
        link = connect_link(&conf, &ps);
        assert_true(run_until(&link, 1, &ps.done, 3000));
        assert_int_not_equal(ps.status, SL_REDIS_LINK_OK);
        sl_redis_link_free(link);
    }

    /* A stopped server accepts the connection (the kernel does) and says
     * nothing: the deadline ends the TLS handshake. */
    {
        struct sl_redis_link_conf conf = conf_for(&s);
        struct status tst = {0};
        struct sl_redis_link *link;
        kill(s.pid, SIGSTOP);
        conf.tls = tls_with("ca.crt", NULL, NULL, NULL);
        conf.timeout_ms = 300;
        link = connect_link(&conf, &tst);
        sl_redis_tls_free(conf.tls);
        assert_true(run_until(&link, 1, &tst.done, 3000));
        assert_int_equal(tst.status, SL_REDIS_LINK_ERR_TIMEOUT);
        assert_non_null(strstr(tst.reason, "in the TLS handshake"));
        assert_string_equal(sl_redis_link_error(link), tst.reason);
        sl_redis_link_free(link);
        kill(s.pid, SIGCONT);
    }

    /* Configurations that cannot work are refused when built. */
    {
        struct sl_redis_tls_conf c = {.ca_file = "/nonexistent/ca.pem"};
        assert_null(sl_redis_tls_new(&c, why, sizeof(why)));
        assert_non_null(strstr(why, "/nonexistent/ca.pem"));
        c = (struct sl_redis_tls_conf){.cert_file = "x.crt"};
        assert_null(sl_redis_tls_new(&c, why, sizeof(why)));
        assert_non_null(strstr(why, "key file"));
    }
    stop_redis(&s);
}

static void test_mutual_tls(void **state)
{
    struct server s = start_redis(true, true, NULL);
    struct status st;
    struct answer a;
    (void)state;

    assert_int_equal(tls_connect(&s, tls_with("ca.crt", "client.crt", "client.key", NULL),
                                 &st, &a),
                     SL_REDIS_LINK_OK);
    assert_string_equal(a.str, "OK");

    /* Without a client certificate: a failed connect.  TLS 1.3 ends the
     * client's handshake before the server has looked at the certificate,
     * so the refusal comes after: the server's alert at the first read
     * ("tlsv13 alert certificate required"), or, when the server's reset
     * comes first, a write that fails. */
    assert_int_not_equal(tls_connect(&s, tls_with("ca.crt", NULL, NULL, NULL), &st, &a),
                         SL_REDIS_LINK_OK);
    assert_int_equal(a.type, 0);
    if (st.status == SL_REDIS_LINK_ERR_TLS)
        assert_non_null(strstr(st.reason, "certificate required"));
    else
        assert_int_equal(st.status, SL_REDIS_LINK_ERR_IO);
    stop_redis(&s);
}

/* Counts every callback of many commands. */
static int null_calls, reply_calls;

static void on_counted_any(struct sl_redis_link *link, struct redisReply *rep, void *p)
{
    int *calls = p;
    (void)link;
    (*calls)++;
    if (rep == NULL)
        null_calls++;
    else
        reply_calls++;
}

static void test_deadline_stopped_server(void **state)
{
    struct server s = start_redis(false, false, NULL);
    struct sl_redis_link_conf conf = conf_for(&s);
    struct status st = {0};
    struct sl_redis_link *link;
    int calls[50] = {0};
    int64_t t0;
    (void)state;

    conf.timeout_ms = 300;
    link = connect_link(&conf, &st);
    assert_true(run_until(&link, 1, &st.up, 3000));
    kill(s.pid, SIGSTOP);
    null_calls = reply_calls = 0;
    t0 = sl_time_mono_ms();
    for (int i = 0; i < 50; i++) {
        const char *argv[] = {"PING"};
        assert_int_equal(sl_redis_link_command(link, 1, argv, NULL, on_counted_any,
                                               &calls[i]), 0);
    }
    assert_true(run_until(&link, 1, &st.done, 3000));
    assert_true(sl_time_mono_ms() - t0 >= 300);
    assert_int_equal(st.disconnects, 1);
    assert_int_equal(st.status, SL_REDIS_LINK_ERR_TIMEOUT);
    assert_non_null(strstr(st.reason, "did not answer within 300 ms"));
    assert_int_equal(null_calls, 50);
    assert_int_equal(reply_calls, 0);
    for (int i = 0; i < 50; i++)
        assert_int_equal(calls[i], 1);
    assert_int_equal(sl_redis_link_check(link, sl_time_mono_ms()), -1);
    sl_redis_link_free(link);
    for (int i = 0; i < 50; i++)
        assert_int_equal(calls[i], 1);
    assert_int_equal(nwatches, 0);

    /* A stopped server still accepts connections (the kernel does): the
     * handshake's deadline ends it. */
    st = (struct status){0};
    link = connect_link(&conf, &st);
    assert_true(run_until(&link, 1, &st.done, 3000));
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.status, SL_REDIS_LINK_ERR_TIMEOUT);
    assert_non_null(strstr(st.reason, "AUTH/SELECT"));
    sl_redis_link_free(link);
    stop_redis(&s);
}

static void test_killed_mid_pipeline(void **state)
{
    struct server s = start_redis(false, false, NULL);
    struct sl_redis_link_conf conf = conf_for(&s);
    struct status st = {0};
    struct sl_redis_link *link;
    int before[10] = {0}, after[200] = {0}, blocked = 0;
    int answered = 0;
    (void)state;

    conf.timeout_ms = 10000;
    link = connect_link(&conf, &st);
    assert_true(run_until(&link, 1, &st.up, 3000));
    null_calls = reply_calls = 0;
    for (int i = 0; i < 10; i++) {
        const char *argv[] = {"INCR", "n"};
        assert_int_equal(sl_redis_link_command(link, 2, argv, NULL, on_counted_any,
                                               &before[i]), 0);
    }
    /* Redis answers a connection in order: nothing behind this is
     * answered until it is. */
    {
        const char *argv[] = {"BLPOP", "never", "0"};
        assert_int_equal(sl_redis_link_command(link, 3, argv, NULL, on_counted_any,
                                               &blocked), 0);
    }
    for (int i = 0; i < 200; i++) {
        const char *argv[] = {"INCR", "n"};
        assert_int_equal(sl_redis_link_command(link, 2, argv, NULL, on_counted_any,
                                               &after[i]), 0);
    }
    while (reply_calls < 10) {
        assert_true(run_until(&link, 1, &before[9], 3000));
        answered = reply_calls;
    }
    assert_int_equal(answered, 10);
    loop_once(&link, 1, 50);  /* nothing more comes */
    assert_int_equal(reply_calls, 10);
    assert_int_equal(sl_redis_link_pending(link), 201);

    kill(s.pid, SIGKILL);
    assert_true(run_until(&link, 1, &st.done, 3000));
    assert_int_equal(st.disconnects, 1);
    assert_int_equal(st.status, SL_REDIS_LINK_ERR_IO);
    assert_non_null(strstr(st.reason, "closed the connection"));
    assert_int_equal(blocked, 1);
    for (int i = 0; i < 200; i++)
        assert_int_equal(after[i], 1);
    assert_int_equal(null_calls, 201);
    assert_int_equal(reply_calls, 10);
    sl_redis_link_free(link);
    assert_int_equal(null_calls, 201);
    stop_redis(&s);
}

struct messages {
    int n;
    char channel[4][32], payload[4][32];
};

static void on_message(struct sl_redis_link *link, struct redisReply *rep, void *arg)
{
    struct messages *m = arg;
    (void)link;
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 3);
    assert_string_equal(rep->element[0]->str, "message");
    if (m->n < 4) {
        snprintf(m->channel[m->n], 32, "%s", rep->element[1]->str);
        snprintf(m->payload[m->n], 32, "%s", rep->element[2]->str);
    }
    m->n++;
}

static void test_subscribe(void **state)
{
    struct server s = start_redis(false, false, NULL);
    struct sl_redis_link_conf conf = conf_for(&s);
    struct status pst = {0};
    struct messages m = {0};
    struct answer sub = {0}, pong = {0}, p1 = {0}, p2 = {0};
    struct sl_redis_link *links[2];
    char why[256];
    (void)state;

    /* The subscriber: only on_message (its arg is the messages). */
    links[0] = sl_redis_link_new(&conf, &test_loop,
                                 &(struct sl_redis_link_cbs){NULL, NULL, on_message, &m},
                                 why, sizeof(why));
    assert_non_null(links[0]);
    links[1] = connect_link(&conf, &pst);
    assert_int_equal(cmd(links[0], &sub, 3, "SUBSCRIBE", "ch1", "ch2"), 0);
    /* UNSUBSCRIBE without channels has no known number of replies. */
    assert_int_equal(cmd(links[0], &pong, 1, "UNSUBSCRIBE"), -1);
    assert_true(run_until(links, 2, &sub.calls, 3000));
    assert_int_equal(sub.calls, 1);
    assert_int_equal(sub.elements, 3);
    assert_string_equal(sub.elem[0], "subscribe");
    assert_string_equal(sub.elem[1], "ch2");
    assert_string_equal(sub.elem[2], "2");

    assert_int_equal(cmd(links[1], &p1, 3, "PUBLISH", "ch1", "hello"), 0);
    assert_int_equal(cmd(links[1], &p2, 3, "PUBLISH", "ch2", "world"), 0);
    assert_true(run_until(links, 2, &p2.calls, 3000));
    assert_int_equal(p1.integer, 1);
    for (int i = 0; i < 100 && m.n < 2; i++)
        loop_once(links, 2, 10);
    assert_int_equal(m.n, 2);
    assert_string_equal(m.channel[0], "ch1");
    assert_string_equal(m.payload[0], "hello");
    assert_string_equal(m.channel[1], "ch2");
    assert_string_equal(m.payload[1], "world");

    /* A PING on a subscriber is answered to its callback, not pushed. */
    assert_int_equal(cmd(links[0], &pong, 1, "PING"), 0);
    assert_true(run_until(links, 2, &pong.calls, 3000));
    assert_int_equal(pong.type, REDIS_REPLY_ARRAY);
    assert_string_equal(pong.elem[0], "pong");
    assert_int_equal(m.n, 2);
    /* An idle subscriber has no deadline. */
    assert_int_equal(sl_redis_link_check(links[0], sl_time_mono_ms()), -1);

    sl_redis_link_free(links[0]);
    sl_redis_link_free(links[1]);
    stop_redis(&s);
}

/* Freeing from inside a callback: the rest are answered NULL inside the
 * free, none after it. */
struct freer {
    struct sl_redis_link *link;
    int calls[20];
    int after_free;
    bool freed;
};

static struct freer *the_freer;

static void on_freeing(struct sl_redis_link *link, struct redisReply *rep, void *p)
{
    int *calls = p;
    (void)rep;
    (*calls)++;
    if (the_freer->freed)
        the_freer->after_free++;
    if (calls == &the_freer->calls[4]) {
        sl_redis_link_free(link);
        the_freer->freed = true;
        the_freer->link = NULL;
    }
}

static void test_free_rules(void **state)
{
    struct server s = start_redis(false, false, NULL);
    struct sl_redis_link_conf conf = conf_for(&s);
    struct status st = {0};
    struct freer f = {0};
    struct answer a[3] = {{0}};
    char why[256];
    (void)state;

    /* Freed from a reply callback. */
    the_freer = &f;
    f.link = connect_link(&conf, &st);
    for (int i = 0; i < 20; i++) {
        const char *argv[] = {"PING"};
        assert_int_equal(sl_redis_link_command(f.link, 1, argv, NULL, on_freeing,
                                               &f.calls[i]), 0);
    }
    for (int i = 0; i < 300 && f.link != NULL; i++)
        loop_once(&f.link, f.link ? 1 : 0, 10);
    assert_null(f.link);
    for (int i = 0; i < 20; i++)
        assert_int_equal(f.calls[i], 1);
    /* Commands 5..19 were answered NULL inside the free (after_free
     * counts those the freeing callback saw run after it returned: 0). */
    assert_int_equal(f.after_free, 0);
    assert_int_equal(nwatches, 0);

    /* Freed with commands in flight, before any answer. */
    {
        struct sl_redis_link *link = connect_link(&conf, &st);
        for (int i = 0; i < 3; i++)
            assert_int_equal(cmd(link, &a[i], 1, "PING"), 0);
        sl_redis_link_free(link);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(a[i].calls, 1);
            assert_int_equal(a[i].type, 0);
        }
        assert_int_equal(nwatches, 0);
    }

    /* Written before the free, not answered: what an owner shutting
     * down must still tell Redis. */
    {
        struct status ust = {0};
        struct answer set = {0}, get = {0};
        struct sl_redis_link *link = connect_link(&conf, &ust);
        assert_int_equal(sl_redis_link_flush_wait(link, 100), -1);  /* not connected */
        assert_true(run_until(&link, 1, &ust.up, 3000));
        assert_int_equal(cmd(link, &set, 3, "SET", "last", "words"), 0);
        assert_int_equal(sl_redis_link_flush_wait(link, 2000), 0);
        sl_redis_link_free(link);
        assert_int_equal(set.calls, 1);
        link = connect_link(&conf, &ust);
        assert_int_equal(cmd(link, &get, 2, "GET", "last"), 0);
        assert_true(run_until(&link, 1, &get.calls, 3000));
        assert_string_equal(get.str, "words");
        sl_redis_link_free(link);
    }

    /* Nothing listens there: refused, at once or through the callback. */
    {
        struct server gone = {.port = free_port()};
        struct sl_redis_link_conf c = conf_for(&gone);
        struct status gst = {0};
        struct sl_redis_link_cbs cbs = {on_connect, on_disconnect, NULL, &gst};
        struct sl_redis_link *link = sl_redis_link_new(&c, &test_loop, &cbs, why, sizeof(why));
        if (link == NULL) {
            assert_non_null(strstr(why, "Connection refused"));
            assert_int_equal(gst.connects, 0);
        } else {
            assert_true(run_until(&link, 1, &gst.done, 3000));
            assert_int_equal(gst.status, SL_REDIS_LINK_ERR_IO);
            assert_non_null(strstr(gst.reason, "Connection refused"));
            sl_redis_link_free(link);
        }
        assert_int_equal(nwatches, 0);
    }

    /* A host that does not resolve: NULL, and no callback ever. */
    {
        struct sl_redis_link_conf c = conf_for(&s);
        struct status gst = {0};
        struct sl_redis_link_cbs cbs = {on_connect, on_disconnect, NULL, &gst};
        c.host = "no-such-host.invalid";
        assert_null(sl_redis_link_new(&c, &test_loop, &cbs, why, sizeof(why)));
        assert_non_null(strstr(why, "cannot resolve no-such-host.invalid"));
        assert_int_equal(gst.connects, 0);
    }

    /* By name: "localhost" may resolve to ::1 first, where nothing
     * listens; the next address is tried. */
    {
        struct sl_redis_link_conf c = conf_for(&s);
        struct status lst = {0};
        struct answer pong = {0};
        struct sl_redis_link *link;
        c.host = "localhost";
        link = connect_link(&c, &lst);
        assert_int_equal(cmd(link, &pong, 1, "PING"), 0);
        assert_true(run_until(&link, 1, &pong.calls, 3000));
        assert_string_equal(pong.str, "PONG");
        sl_redis_link_free(link);
    }
    stop_redis(&s);
}

/* The owner frees the link from its status callbacks: on a failure
 * always, on a connect when free_on_up says so. */
static struct sl_redis_link *self_freeing;
static bool free_on_up;

static void on_status_free(struct sl_redis_link *link, int status, const char *reason,
                           void *arg)
{
    struct status *st = arg;
    assert_ptr_equal(link, self_freeing);
    st->status = status;
    snprintf(st->reason, sizeof(st->reason), "%s", reason ? reason : "");
    if (status == SL_REDIS_LINK_OK)
        st->up = 1;
    else
        st->done = 1;
    if (status != SL_REDIS_LINK_OK || free_on_up) {
        sl_redis_link_free(link);
        self_freeing = NULL;
    }
}

static void test_free_from_status_callbacks(void **state)
{
    struct server s = start_redis(false, false, NULL);
    struct sl_redis_link_conf conf = conf_for(&s);
    struct sl_redis_link_cbs cbs;
    struct status st = {0};
    struct answer a[3] = {{0}};
    char why[256];
    (void)state;

    /* Freed on its connect. */
    free_on_up = true;
    cbs = (struct sl_redis_link_cbs){on_status_free, on_status_free, NULL, &st};
    self_freeing = sl_redis_link_new(&conf, &test_loop, &cbs, why, sizeof(why));
    assert_non_null(self_freeing);
    for (int i = 0; i < 3; i++)
        assert_int_equal(cmd(self_freeing, &a[i], 1, "PING"), 0);
    assert_true(run_until(&self_freeing, 1, &st.up, 3000));
    assert_null(self_freeing);
    /* Freed inside on_connect, before their replies were read. */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(a[i].calls, 1);
        assert_int_equal(a[i].type, 0);
    }
    assert_int_equal(nwatches, 0);

    /* Freed on its disconnect, with commands out. */
    free_on_up = false;
    st = (struct status){0};
    memset(a, 0, sizeof(a));
    cbs = (struct sl_redis_link_cbs){on_status_free, on_status_free, NULL, &st};
    self_freeing = sl_redis_link_new(&conf, &test_loop, &cbs, why, sizeof(why));
    assert_non_null(self_freeing);
    assert_true(run_until(&self_freeing, 1, &st.up, 3000));
    assert_non_null(self_freeing);
    {
        const char *argv[] = {"BLPOP", "never", "0"};
        for (int i = 0; i < 3; i++)
            assert_int_equal(sl_redis_link_command(self_freeing, 3, argv, NULL, on_reply,
                                                   &a[i]), 0);
    }
    loop_once(&self_freeing, 1, 50);
    kill(s.pid, SIGKILL);
    assert_true(run_until(&self_freeing, 1, &st.done, 3000));
    assert_null(self_freeing);
    assert_int_equal(st.status, SL_REDIS_LINK_ERR_IO);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(a[i].calls, 1);
        assert_int_equal(a[i].type, 0);
    }
    assert_int_equal(nwatches, 0);
    stop_redis(&s);
}

static void test_ipv6(void **state)
{
    static const char *const extra[] = {"--bind", "127.0.0.1", "::1", NULL};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct server s;
    struct sl_redis_link_conf conf;
    struct status st = {0};
    struct answer pong = {0};
    struct sl_redis_link *link;
    bool have_v6 = fd >= 0 && bind(fd, (struct sockaddr *)&a6, sizeof(a6)) == 0;
    (void)state;

    if (fd >= 0)
        close(fd);
    if (!have_v6)
        skip();  /* no IPv6 loopback on this machine */
    s = start_redis(false, false, extra);
    conf = conf_for(&s);
    conf.host = "::1";
    link = connect_link(&conf, &st);
    assert_int_equal(cmd(link, &pong, 1, "PING"), 0);
    assert_true(run_until(&link, 1, &pong.calls, 3000));
    assert_string_equal(pong.str, "PONG");
    sl_redis_link_free(link);

    /* Its sentences write the address in brackets. */
    stop_redis(&s);
    st = (struct status){0};
    {
        struct sl_redis_link_cbs cbs = {on_connect, on_disconnect, NULL, &st};
        char why[256];
        link = sl_redis_link_new(&conf, &test_loop, &cbs, why, sizeof(why));
        if (link == NULL) {
            assert_non_null(strstr(why, "[::1]:"));
        } else {
            assert_true(run_until(&link, 1, &st.done, 3000));
            assert_non_null(strstr(st.reason, "[::1]:"));
            sl_redis_link_free(link);
        }
    }
}

static int setup_all(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/sl-redis-link-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    make_certs();
    return 0;
}

static int teardown_all(void **state)
{
    char cmdline[128];
    (void)state;
    for (int i = 0; i < MAX_SERVERS; i++) {
        if (started[i] > 0) {
            kill(started[i], SIGCONT);
            kill(started[i], SIGKILL);
            waitpid(started[i], NULL, 0);
        }
    }
    snprintf(cmdline, sizeof(cmdline), "rm -rf %s", tmpdir);
    return system(cmdline) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_cork_and_read),
        cmocka_unit_test(test_acl),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_mutual_tls),
        cmocka_unit_test(test_deadline_stopped_server),
        cmocka_unit_test(test_killed_mid_pipeline),
        cmocka_unit_test(test_subscribe),
        cmocka_unit_test(test_free_rules),
        cmocka_unit_test(test_free_from_status_callbacks),
        cmocka_unit_test(test_ipv6),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
