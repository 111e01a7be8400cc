# Turn the Redis scripts in DIR (NAMES: a comma-separated list of script
# names, each DIR/NAME.lua) into a C source OUT defining sl_redis_lua[],
# indexed by enum sl_redis_script (limits/sl_redis_lua.h: NAME in upper case
# after SL_LUA_).  A line "--! include FILE" is replaced by FILE's text (from
# DIR, itself expanded the same way), so a script is sent to Redis whole.
string(REPLACE "," ";" names "${NAMES}")
file(WRITE ${OUT} "/* Generated from the scripts in ${DIR} by cmake/embed_lua.cmake; do not edit. */\n"
  "#include \"sl_redis_lua.h\"\n")
set(table "")
foreach(name IN LISTS names)
  file(READ ${DIR}/${name}.lua text)
  set(depth 0)
  while(text MATCHES "--! include ([a-z_]+\\.lua)\n")
    set(inc ${CMAKE_MATCH_1})
    file(READ ${DIR}/${inc} sub)
    string(REPLACE "--! include ${inc}\n" "${sub}" text "${text}")
    math(EXPR depth "${depth} + 1")
    if(depth GREATER 16)
      message(FATAL_ERROR "${name}.lua: includes nested too deep")
    endif()
  endwhile()
  string(HEX "${text}" hex)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
  string(TOUPPER ${name} up)
  file(APPEND ${OUT} "static const char sl_lua_${name}[] = {\n${bytes}0x00};\n")
  string(APPEND table "    [SL_LUA_${up}] = sl_lua_${name},\n")
endforeach()
file(APPEND ${OUT} "const char *const sl_redis_lua[SL_LUA_COUNT] = {\n${table}};\n")
