# Turn the Redis scripts in DIR (NAMES: a comma-separated list of script
# names, each DIR/NAME.lua) into a C source OUT defining the table TABLE[]
# (default sl_redis_lua), indexed by the enum in limits/sl_redis_lua.h
# whose names are PREFIX (default SL_LUA_) and NAME in upper case.  A line
# "--! include FILE" is replaced by FILE's text (from DIR, itself expanded
# the same way), so a script is sent to Redis whole.
if(NOT TABLE)
  set(TABLE sl_redis_lua)
endif()
if(NOT PREFIX)
  set(PREFIX SL_LUA_)
endif()
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
  string(APPEND table "    [${PREFIX}${up}] = sl_lua_${name},\n")
endforeach()
file(APPEND ${OUT} "const char *const ${TABLE}[${PREFIX}COUNT] = {\n${table}};\n")
