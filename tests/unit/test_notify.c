/*
 * Unit tests for sl_notify: what a service manager listening on
 * $NOTIFY_SOCKET receives (a real AF_UNIX datagram socket, by path and in
 * the abstract namespace), and when a watchdog is asked of the process.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sl_notify.h"

/* A datagram socket bound at NAME (a path, or '@' + abstract name). */
static int listen_at(const char *name)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t n = strlen(name);
    socklen_t len;
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);

    assert_true(fd >= 0);
    memcpy(addr.sun_path, name, n);
    if (name[0] == '@')
        addr.sun_path[0] = '\0';
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (name[0] == '/'));
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, len), 0);
    return fd;
}

static void receive(int fd, char *buf, size_t cap)
{
    ssize_t n = recv(fd, buf, cap - 1, MSG_DONTWAIT);

    assert_true(n > 0);
    buf[n] = '\0';
}

static void no_socket_is_a_quiet_no_op(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(sl_notify_ready("x"), 0);
    assert_int_equal(sl_notify_stopping(), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    assert_int_equal(sl_notify_watchdog(), 0);
}

static void messages_reach_a_path_socket(void **state)
{
    char path[] = "/tmp/sl-notify-XXXXXX";
    char sock[64], buf[512];
    int fd;

    (void)state;
    assert_non_null(mkdtemp(path));
    snprintf(sock, sizeof(sock), "%s/notify", path);
    fd = listen_at(sock);
    setenv("NOTIFY_SOCKET", sock, 1);

    assert_int_equal(sl_notify_ready("serving on 127.0.0.1:8080"), 1);
    receive(fd, buf, sizeof(buf));
    assert_string_equal(buf, "READY=1\nSTATUS=serving on 127.0.0.1:8080");

    assert_int_equal(sl_notify_reloading(), 1);
    receive(fd, buf, sizeof(buf));
    assert_true(strncmp(buf, "RELOADING=1\nMONOTONIC_USEC=", 27) == 0);
    assert_true(strtoll(buf + 27, NULL, 10) > 0);

    assert_int_equal(sl_notify_stopping(), 1);
    receive(fd, buf, sizeof(buf));
    assert_true(strncmp(buf, "STOPPING=1\n", 11) == 0);

    assert_int_equal(sl_notify_watchdog(), 1);
    receive(fd, buf, sizeof(buf));
    assert_string_equal(buf, "WATCHDOG=1");

    close(fd);
    unlink(sock);
    rmdir(path);
    unsetenv("NOTIFY_SOCKET");
}

static void messages_reach_an_abstract_socket(void **state)
{
    char name[64], buf[64];
    int fd;

    (void)state;
    snprintf(name, sizeof(name), "@sl-notify-test-%d", (int)getpid());
    fd = listen_at(name);
    setenv("NOTIFY_SOCKET", name, 1);
    assert_int_equal(sl_notify_watchdog(), 1);
    receive(fd, buf, sizeof(buf));
    assert_string_equal(buf, "WATCHDOG=1");
    close(fd);
    unsetenv("NOTIFY_SOCKET");
}

static void a_gone_manager_is_an_error_not_a_crash(void **state)
{
    (void)state;
    setenv("NOTIFY_SOCKET", "/tmp/sl-notify-nobody-listens-here", 1);
    assert_true(sl_notify_ready("x") < 0);
    setenv("NOTIFY_SOCKET", "vsock:2:1234", 1);
    assert_true(sl_notify_ready("x") < 0);
    unsetenv("NOTIFY_SOCKET");
}

static void watchdog_interval_is_half_of_what_is_asked(void **state)
{
    char pid[32];

    (void)state;
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    assert_int_equal(sl_notify_watchdog_interval_us(), 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    assert_int_equal(sl_notify_watchdog_interval_us(), 15000000);
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(sl_notify_watchdog_interval_us(), 15000000);
    /* Meant for another process (a parent that kept the environment). */
    setenv("WATCHDOG_PID", "1", 1);
    assert_int_equal(sl_notify_watchdog_interval_us(), 0);
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "soon", 1);
    assert_int_equal(sl_notify_watchdog_interval_us(), 0);
    setenv("WATCHDOG_USEC", "-5", 1);
    assert_int_equal(sl_notify_watchdog_interval_us(), 0);
    unsetenv("WATCHDOG_USEC");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(no_socket_is_a_quiet_no_op),
        cmocka_unit_test(messages_reach_a_path_socket),
        cmocka_unit_test(messages_reach_an_abstract_socket),
        cmocka_unit_test(a_gone_manager_is_an_error_not_a_crash),
        cmocka_unit_test(watchdog_interval_is_half_of_what_is_asked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
