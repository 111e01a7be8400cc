# Turn the file IN into a C source OUT defining sl_admin_page (its bytes,
# NUL-terminated) and sl_admin_page_len (without the NUL).
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR len "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE ${OUT} "/* Generated from ${IN} by cmake/embed.cmake; do not edit. */\n"
  "const unsigned char sl_admin_page[] = {\n${bytes}0x00};\n"
  "const unsigned long sl_admin_page_len = ${len};\n")
