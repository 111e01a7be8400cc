/*
 * sl_assert — SL_ASSERT(expr): an invariant the code relies on, checked in
 * the sanitizer build and compiled out otherwise (haproxy's BUG_ON, redis's
 * serverAssert).
 *
 * It states what the program itself guarantees — a heap's order, a count
 * that never goes below zero, an entry on exactly one list — never what a
 * client, a config file, an upstream or a Redis server sends: bad input
 * gets an error answer, never an abort.  When an assertion fails, the
 * process prints "file:line: assertion failed: expr" on stderr and aborts,
 * so the sanitizer build's tests stop at the first broken invariant
 * instead of far downstream.
 *
 * On when the build defines SLUICE_ASSERT (CMake: SLUICE_SANITIZE=ON);
 * otherwise the expression is not evaluated at all, so it must have no
 * side effect.  The common layer: includes nothing of limits/ or proxy/.
 */
#ifndef SL_ASSERT_H
#define SL_ASSERT_H

#ifdef SLUICE_ASSERT
#include <stdio.h>
#include <stdlib.h>

#define SL_ASSERT(expr)                                                     \
    do {                                                                    \
        if (!(expr)) {                                                      \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__,     \
                    __LINE__, #expr);                                       \
            abort();                                                        \
        }                                                                   \
    } while (0)
#else
/* sizeof keeps the expression compiled (names checked, no unused warning)
 * without evaluating it. */
#define SL_ASSERT(expr) ((void)sizeof(!(expr)))
#endif

#endif
