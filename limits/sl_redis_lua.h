/*
 * sl_redis_lua — the Lua scripts the Redis store runs.
 *
 * Each script is a file under limits/lua/, opening with its KEYS/ARGV
 * contract and its reply; the build embeds them (cmake/embed_lua.cmake),
 * replacing a line "--! include FILE" by that file, so each entry of
 * sl_redis_lua[] is one whole script, loaded with SCRIPT LOAD and run with
 * EVALSHA.  prelude.lua (Redis's time, number formatting, logging sends)
 * and commits.lua (the commit section) are shared by the scripts that
 * include them.  The token broker's few scripts (auth_*.lua) are a table
 * of their own.  tests/integration/test_lua_scripts.py runs each script
 * against a real redis-server with known answers.
 */
#ifndef SL_REDIS_LUA_H
#define SL_REDIS_LUA_H

/* One per script of SL_REDIS_SCRIPTS in CMakeLists.txt: SL_LUA_ and the
 * file's name in upper case (the table is indexed by these names). */
enum sl_redis_script {
    SL_LUA_DECIDE,
    SL_LUA_COMMIT,
    SL_LUA_RELEASE,
    SL_LUA_RENEW,
    SL_LUA_PAUSE,
    SL_LUA_SYNC,
    SL_LUA_SNAPSHOT,
    SL_LUA_HIST_ADD,
    SL_LUA_HIST_READ,
    SL_LUA_SET_PAUSE,
    SL_LUA_SETTLE,
    SL_LUA_FLEET,
    SL_LUA_REPAIR,
    SL_LUA_COUNT,
};

extern const char *const sl_redis_lua[SL_LUA_COUNT];

/* The token broker's (sl_auth_store.c): SL_AUTH_SCRIPTS in CMakeLists.txt,
 * files auth_NAME.lua. */
enum sl_auth_script {
    SL_AUTH_LUA_AUTH_PUT,
    SL_AUTH_LUA_AUTH_DROP,
    SL_AUTH_LUA_AUTH_FAIL,
    SL_AUTH_LUA_AUTH_GET,
    SL_AUTH_LUA_COUNT,
};

extern const char *const sl_auth_lua[SL_AUTH_LUA_COUNT];

#endif
