/*
 * sl_calendar — see sl_calendar.h.
 *
 * Zone files are read once, at configuration load (RFC 8536 TZif: the
 * 64-bit table of version 2 and later, and the POSIX TZ rule at the end for
 * instants past the table).  No process-wide state (TZ, tzset) is touched,
 * so any number of zones live side by side and every thread may ask.
 */
#include "sl_calendar.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SL_TZ_FILE_MAX (256 * 1024)

/* One side of a POSIX rule: when daylight time starts or ends. */
struct sl_tz_rule {
    char kind;                  /* 'M' (month.week.day), 'J' (Julian 1-365), 'N' (0-365) */
    int m, w, d, n;
    int32_t time;               /* seconds after local midnight (may be < 0, > 24 h) */
};

struct sl_tz {
    int64_t *trans;             /* transition times, UTC seconds, ascending */
    int32_t *offs;              /* offset from each transition on */
    size_t n;
    int32_t off0;               /* before the first transition (or always) */
    bool rule;                  /* a POSIX rule covers the time past the table */
    bool has_dst;
    int32_t std_off, dst_off;
    struct sl_tz_rule start, end;
};

/* ---- civil dates (H. Hinnant's algorithms) ---- */

int64_t sl_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void sl_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int64_t sl_floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

static bool sl_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* ---- POSIX TZ strings ---- */

/* A zone abbreviation: <...> or three or more letters. */
static const char *sl_tz_name(const char *p)
{
    const char *s = p;

    if (*p == '<') {
        while (*p && *p != '>')
            p++;
        return *p == '>' ? p + 1 : NULL;
    }
    while (isalpha((unsigned char)*p))
        p++;
    return p - s >= 3 ? p : NULL;
}

/* Two digits into *V: past them, or NULL. */
static const char *sl_tz_2d(const char *p, long *v)
{
    if (!isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1]))
        return NULL;
    *v = (p[0] - '0') * 10 + (p[1] - '0');
    return p + 2;
}

/* [+-]hh[:mm[:ss]] into *SECS; hours up to MAXH. */
static const char *sl_tz_hms(const char *p, int maxh, int32_t *secs)
{
    int sign = 1;
    long h = 0, m = 0, s = 0;

    if (*p == '+' || *p == '-')
        sign = *p++ == '-' ? -1 : 1;
    if (!isdigit((unsigned char)*p))
        return NULL;
    while (isdigit((unsigned char)*p) && h <= maxh)
        h = h * 10 + (*p++ - '0');
    if (h > maxh)
        return NULL;
    if (*p == ':' && (p = sl_tz_2d(p + 1, &m)) != NULL && *p == ':')
        p = sl_tz_2d(p + 1, &s);
    if (p == NULL)
        return NULL;
    if (m > 59 || s > 59)
        return NULL;
    *secs = (int32_t)(sign * (h * 3600 + m * 60 + s));
    return p;
}

static const char *sl_tz_num(const char *p, int lo, int hi, int *out)
{
    int v = 0, digits = 0;

    while (isdigit((unsigned char)*p) && digits < 4) {
        v = v * 10 + (*p++ - '0');
        digits++;
    }
    if (digits == 0 || v < lo || v > hi)
        return NULL;
    *out = v;
    return p;
}

static const char *sl_tz_rule(const char *p, struct sl_tz_rule *r)
{
    r->time = 7200;  /* 02:00 unless said */
    if (*p == 'M') {
        r->kind = 'M';
        if ((p = sl_tz_num(p + 1, 1, 12, &r->m)) == NULL || *p++ != '.' ||
            (p = sl_tz_num(p, 1, 5, &r->w)) == NULL || *p++ != '.' ||
            (p = sl_tz_num(p, 0, 6, &r->d)) == NULL)
            return NULL;
    } else if (*p == 'J') {
        r->kind = 'J';
        if ((p = sl_tz_num(p + 1, 1, 365, &r->n)) == NULL)
            return NULL;
    } else {
        r->kind = 'N';
        if ((p = sl_tz_num(p, 0, 365, &r->n)) == NULL)
            return NULL;
    }
    if (*p == '/')
        p = sl_tz_hms(p + 1, 167, &r->time);
    return p;
}

/* "CET-1CEST,M3.5.0,M10.5.0/3" into Z.  0 or -1. */
static int sl_tz_posix(struct sl_tz *z, const char *s)
{
    const char *p = sl_tz_name(s);
    int32_t v;

    if (p == NULL || (p = sl_tz_hms(p, 24, &v)) == NULL)
        return -1;
    z->std_off = -v;  /* POSIX counts west of UTC as positive */
    z->dst_off = z->std_off + 3600;
    if (*p == '\0') {
        z->rule = true;
        return 0;
    }
    if ((p = sl_tz_name(p)) == NULL)
        return -1;
    z->has_dst = true;
    if (*p != ',' && *p != '\0') {
        if ((p = sl_tz_hms(p, 24, &v)) == NULL)
            return -1;
        z->dst_off = -v;
    }
    if (*p == '\0') {
        /* No dates: POSIX leaves them to the system; the US rules, as
         * glibc does. */
        z->start = (struct sl_tz_rule){.kind = 'M', .m = 3, .w = 2, .d = 0, .time = 7200};
        z->end = (struct sl_tz_rule){.kind = 'M', .m = 11, .w = 1, .d = 0, .time = 7200};
        z->rule = true;
        return 0;
    }
    if (*p++ != ',' || (p = sl_tz_rule(p, &z->start)) == NULL || *p++ != ',' ||
        (p = sl_tz_rule(p, &z->end)) == NULL || *p != '\0')
        return -1;
    z->rule = true;
    return 0;
}

/* UTC seconds at which rule R falls in year Y, the offset before it being
 * OFF. */
static int64_t sl_tz_when(const struct sl_tz_rule *r, int64_t y, int32_t off)
{
    int64_t day;

    if (r->kind == 'J') {
        day = sl_days_from_civil(y, 1, 1) + r->n - 1 + (sl_leap(y) && r->n >= 60);
    } else if (r->kind == 'N') {
        day = sl_days_from_civil(y, 1, 1) + r->n;
    } else {
        int64_t first = sl_days_from_civil(y, (unsigned)r->m, 1);
        int wd = (int)(((first + 4) % 7 + 7) % 7);   /* 0 = Sunday */
        unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        int64_t last = first + mdays[r->m - 1] + (r->m == 2 && sl_leap(y)) - 1;
        day = first + (r->d - wd + 7) % 7 + 7 * (r->w - 1);
        while (day > last)
            day -= 7;
    }
    return day * 86400 + r->time - off;
}

static int32_t sl_tz_rule_offset(const struct sl_tz *z, int64_t t)
{
    int64_t y;
    unsigned m, d;

    if (!z->has_dst)
        return z->std_off;
    sl_civil_from_days(sl_floor_div(t + z->std_off, 86400), &y, &m, &d);
    int64_t s = sl_tz_when(&z->start, y, z->std_off);
    int64_t e = sl_tz_when(&z->end, y, z->dst_off);
    if (s < e)
        return t >= s && t < e ? z->dst_off : z->std_off;
    return t >= e && t < s ? z->std_off : z->dst_off;
}

int32_t sl_tz_offset(const struct sl_tz *z, int64_t t)
{
    size_t lo = 0, hi;

    if (z->n == 0 || t < z->trans[0])
        return z->n == 0 && z->rule ? sl_tz_rule_offset(z, t) : z->off0;
    if (t >= z->trans[z->n - 1] && z->rule)
        return sl_tz_rule_offset(z, t);
    hi = z->n;
    while (hi - lo > 1) {   /* the last transition at or before t */
        size_t mid = lo + (hi - lo) / 2;
        if (z->trans[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return z->offs[lo];
}

/* ---- TZif ---- */

static uint32_t sl_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t sl_be64(const unsigned char *p)
{
    return (int64_t)((uint64_t)sl_be32(p) << 32 | sl_be32(p + 4));
}

struct sl_tz *sl_tz_parse(const unsigned char *data, size_t len, char *why,
                          size_t why_len)
{
    const unsigned char *p = data, *end = data + len;
    uint32_t cnt[6];
    size_t tsize = 4;
    struct sl_tz *z;

    if (len < 44 || memcmp(data, "TZif", 4) != 0) {
        snprintf(why, why_len, "not a TZif zone file");
        return NULL;
    }
    for (;;) {
        for (int i = 0; i < 6; i++)
            cnt[i] = sl_be32(p + 20 + 4 * i);
        size_t body = (size_t)cnt[3] * (tsize + 1) + (size_t)cnt[4] * 6 + cnt[5] +
                      (size_t)cnt[2] * (tsize + 4) + cnt[1] + cnt[0];
        if (cnt[4] == 0 || cnt[3] > 100000 || cnt[4] > 256 || cnt[2] > 10000 ||
            (size_t)(end - p) < 44 + body) {
            snprintf(why, why_len, "a damaged TZif zone file");
            return NULL;
        }
        /* Version 2 and later: skip the 32-bit block for the 64-bit one. */
        if (tsize == 4 && p[4] >= '2') {
            p += 44 + body;
            tsize = 8;
            if ((size_t)(end - p) < 44 || memcmp(p, "TZif", 4) != 0) {
                snprintf(why, why_len, "a damaged TZif zone file");
                return NULL;
            }
            continue;
        }
        break;
    }
    z = calloc(1, sizeof(*z));
    if (z == NULL)
        return NULL;
    z->n = cnt[3];
    z->trans = calloc(z->n ? z->n : 1, sizeof(*z->trans));
    z->offs = calloc(z->n ? z->n : 1, sizeof(*z->offs));
    if (z->trans == NULL || z->offs == NULL) {
        sl_tz_free(z);
        return NULL;
    }
    {
        const unsigned char *times = p + 44;
        const unsigned char *idx = times + (size_t)z->n * tsize;
        const unsigned char *types = idx + z->n;
        const unsigned char *foot = types + (size_t)cnt[4] * 6 + cnt[5] +
                                    (size_t)cnt[2] * (tsize + 4) + cnt[1] + cnt[0];
        for (size_t i = 0; i < z->n; i++) {
            z->trans[i] = tsize == 8 ? sl_be64(times + 8 * i)
                                     : (int64_t)(int32_t)sl_be32(times + 4 * i);
            if (idx[i] >= cnt[4] || (i > 0 && z->trans[i] <= z->trans[i - 1])) {
                snprintf(why, why_len, "a damaged TZif zone file");
                sl_tz_free(z);
                return NULL;
            }
            z->offs[i] = (int32_t)sl_be32(types + 6 * idx[i]);
        }
        z->off0 = (int32_t)sl_be32(types);
        for (size_t i = 0; i < z->n + 1; i++) {
            int32_t o = i < z->n ? z->offs[i] : z->off0;
            if (o < -26 * 3600 || o > 26 * 3600) {
                snprintf(why, why_len, "a damaged TZif zone file (offset out of range)");
                sl_tz_free(z);
                return NULL;
            }
        }
        if (tsize == 8 && foot < end && *foot == '\n') {
            const unsigned char *nl = memchr(foot + 1, '\n', (size_t)(end - foot - 1));
            if (nl != NULL && nl - foot - 1 > 0 && nl - foot - 1 < 128) {
                char tz[128];
                memcpy(tz, foot + 1, (size_t)(nl - foot - 1));
                tz[nl - foot - 1] = '\0';
                if (sl_tz_posix(z, tz) != 0) {
                    snprintf(why, why_len, "a damaged TZif zone file (its rule)");
                    sl_tz_free(z);
                    return NULL;
                }
            }
        }
    }
    return z;
}

static bool sl_tz_safe_name(const char *name)
{
    if (name[0] == '\0' || name[0] == '/' || strlen(name) > 200)
        return false;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && strchr("/_+-", *p) == NULL)
            return false;
    return strstr(name, "..") == NULL && strstr(name, "//") == NULL;
}

struct sl_tz *sl_tz_load(const char *name, const char *zoneinfo, char *why,
                         size_t why_len)
{
    struct sl_tz *z;
    int32_t off;
    const char *end;

    if (strcmp(name, "UTC") == 0 || strcmp(name, "Z") == 0) {
        z = calloc(1, sizeof(*z));
        if (z == NULL)
            snprintf(why, why_len, "out of memory");
        return z;
    }
    if (name[0] == '+' || name[0] == '-') {
        size_t len = strlen(name);
        end = sl_tz_hms(name, 14, &off);
        if (end == NULL || *end != '\0' || !(len == 3 || (len == 6 && name[3] == ':'))) {
            snprintf(why, why_len, "a fixed offset is written \"+HH:MM\" or "
                     "\"-HH:MM\" (at most 14 hours)");
            return NULL;
        }
        z = calloc(1, sizeof(*z));
        if (z == NULL) {
            snprintf(why, why_len, "out of memory");
            return NULL;
        }
        z->off0 = off;   /* ISO 8601: east of UTC is positive */
        return z;
    }
    if (!sl_tz_safe_name(name)) {
        snprintf(why, why_len, "is neither \"UTC\", an offset like \"+02:00\", "
                 "nor a zone name like \"Europe/Berlin\"");
        return NULL;
    }
    if (zoneinfo == NULL)
        zoneinfo = getenv("TZDIR");
    if (zoneinfo == NULL || zoneinfo[0] == '\0')
        zoneinfo = "/usr/share/zoneinfo";
    {
        char path[512];
        unsigned char *buf;
        size_t n;
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", zoneinfo, name);
        f = fopen(path, "rb");
        if (f == NULL) {
            snprintf(why, why_len, "no such time zone in %s (is tzdata installed?)",
                     zoneinfo);
            return NULL;
        }
        buf = malloc(SL_TZ_FILE_MAX);
        if (buf == NULL) {
            fclose(f);
            snprintf(why, why_len, "out of memory");
            return NULL;
        }
        n = fread(buf, 1, SL_TZ_FILE_MAX, f);
        fclose(f);
        z = sl_tz_parse(buf, n, why, why_len);
        free(buf);
        return z;
    }
}

void sl_tz_free(struct sl_tz *z)
{
    if (z == NULL)
        return;
    free(z->trans);
    free(z->offs);
    free(z);
}

/* ---- periods ---- */

static int64_t sl_local(const struct sl_tz *z, int64_t u)
{
    return u + sl_tz_offset(z, u);
}

/* The first UTC second whose local time is at or past L (local seconds). */
static int64_t sl_first_at(const struct sl_tz *z, int64_t l)
{
    int32_t offs[3] = {sl_tz_offset(z, l - 93600), sl_tz_offset(z, l),
                       sl_tz_offset(z, l + 93600)};
    int64_t best = INT64_MAX, lo, hi;
    int32_t omin = offs[0], omax = offs[0];

    for (int i = 0; i < 3; i++) {
        int64_t c = l - offs[i];
        if (offs[i] < omin)
            omin = offs[i];
        if (offs[i] > omax)
            omax = offs[i];
        if (sl_tz_offset(z, c) == offs[i] && c < best)
            best = c;   /* the local clock reads exactly L at c */
    }
    if (best != INT64_MAX)
        return best;
    /* L falls in a gap: the instant the clocks jump over it. */
    lo = l - omax;
    hi = l - omin;
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (sl_local(z, mid) >= l)
            hi = mid;
        else
            lo = mid;
    }
    return sl_local(z, lo) >= l ? lo : hi;
}

void sl_calendar_period(const struct sl_calendar *cal, int64_t t_us,
                        int64_t *start_us, int64_t *end_us)
{
    int64_t t = sl_floor_div(t_us, 1000000);
    int64_t l = sl_local(cal->tz, t), ls, le, s, e;

    if (cal->month) {
        int64_t y;
        unsigned m, d;
        sl_civil_from_days(sl_floor_div(l, 86400), &y, &m, &d);
        ls = sl_days_from_civil(y, m, 1) * 86400;
        le = (m == 12 ? sl_days_from_civil(y + 1, 1, 1)
                      : sl_days_from_civil(y, m + 1, 1)) * 86400;
    } else {
        ls = sl_floor_div(l, cal->span_s) * cal->span_s;
        le = ls + cal->span_s;
    }
    s = sl_first_at(cal->tz, ls);
    e = sl_first_at(cal->tz, le);
    /* Clocks set back can repeat local times: T is always inside. */
    if (s > t)
        s = t;
    if (e <= t)
        e = t + 1;
    *start_us = s * 1000000;
    *end_us = e * 1000000;
}
