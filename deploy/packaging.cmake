# Installation and the Debian package.
#
# "cmake --install build --prefix /usr/local" (or any prefix) puts the
# binary in PREFIX/bin, the man page in PREFIX/share/man/man8, the systemd
# unit in PREFIX/lib/systemd/system (systemd reads /usr/local/lib/systemd
# and /usr/lib/systemd), the documentation in PREFIX/share/doc/sluice and
# the example configuration in PREFIX/etc/sluice/sluice.json (the unit
# reads /etc/sluice/sluice.json: copy it there for a /usr/local install).
#
# "cpack -G DEB" (in the build directory, configured with
# -DCMAKE_INSTALL_PREFIX=/usr) makes sluice_VERSION_ARCH.deb: the same
# files laid out as Debian expects (/lib/systemd/system for the unit, as
# Debian 12's systemd does, /etc/sluice/sluice.json as a conffile, a
# copyright file and a compressed changelog), dependencies computed from
# the binary's libraries by dpkg-shlibdeps. lintian reports no error on
# it (tests/integration/test_packaging.py).
#
# The provider presets go to PREFIX/share/sluice/presets (the binary looks
# there, and in share/sluice/presets beside its own bin/).
#
# -DSLUICE_PACKAGING=OFF installs the binary and the presets alone (the
# container image's build, which copies only the sources).
include(GNUInstallDirs)
option(SLUICE_PACKAGING "Install the man page, the unit, the docs; cpack" ON)

install(TARGETS sluice RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# The provider presets, where the binary looks for them (sl_preset.h).
install(DIRECTORY ${CMAKE_SOURCE_DIR}/presets/
        DESTINATION ${CMAKE_INSTALL_DATADIR}/sluice/presets
        FILES_MATCHING PATTERN "*.json")
if(NOT SLUICE_PACKAGING)
  return()
endif()

# The man page, compressed at build time as Debian policy asks.
set(SL_MAN_GZ ${CMAKE_BINARY_DIR}/sluice.8.gz)
add_custom_command(
  OUTPUT ${SL_MAN_GZ}
  COMMAND gzip -9n -c ${CMAKE_SOURCE_DIR}/deploy/sluice.8 > ${SL_MAN_GZ}
  DEPENDS ${CMAKE_SOURCE_DIR}/deploy/sluice.8
  COMMENT "Compressing the man page")
add_custom_target(sluice_man ALL DEPENDS ${SL_MAN_GZ})
install(FILES ${SL_MAN_GZ} DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)

# With the /usr prefix (the package), /etc and /lib/systemd/system as
# Debian lays them out; with any other, paths relative to the prefix, so
# that "cmake --install --prefix" moves them all.
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(SL_ETC_DIR /etc/sluice)
  set(SL_UNIT_DIR /lib/systemd/system)
else()
  set(SL_ETC_DIR ${CMAKE_INSTALL_SYSCONFDIR}/sluice)
  set(SL_UNIT_DIR lib/systemd/system)
endif()
install(FILES ${CMAKE_SOURCE_DIR}/deploy/sluice.service DESTINATION ${SL_UNIT_DIR})
install(FILES ${CMAKE_SOURCE_DIR}/deploy/sluice.json DESTINATION ${SL_ETC_DIR})

# Debian wants its copyright file and a compressed Debian changelog (a
# package-format one, pointing at the project's CHANGELOG.md) in the doc
# directory; the rest of docs/ goes beside them.
set(SL_CHANGELOG_GZ ${CMAKE_BINARY_DIR}/changelog.gz)
add_custom_command(
  OUTPUT ${SL_CHANGELOG_GZ}
  COMMAND gzip -9n -c ${CMAKE_SOURCE_DIR}/deploy/debian/changelog > ${SL_CHANGELOG_GZ}
  DEPENDS ${CMAKE_SOURCE_DIR}/deploy/debian/changelog
  COMMENT "Compressing the Debian changelog")
add_custom_target(sluice_changelog ALL DEPENDS ${SL_CHANGELOG_GZ})
install(FILES ${SL_CHANGELOG_GZ} DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES ${CMAKE_SOURCE_DIR}/deploy/copyright ${CMAKE_SOURCE_DIR}/CHANGELOG.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY ${CMAKE_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR}
        FILES_MATCHING PATTERN "*.md")
install(DIRECTORY ${CMAKE_SOURCE_DIR}/deploy/examples DESTINATION ${CMAKE_INSTALL_DOCDIR})

set(CPACK_PACKAGE_NAME sluice)
set(CPACK_PACKAGE_VENDOR "The sluice authors")
set(CPACK_PACKAGE_CONTACT "The sluice authors <sluice@example.org>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "caller-side API quota proxy")
set(CPACK_PACKAGE_DESCRIPTION
"A local HTTP reverse proxy that apps point at instead of a third-party
API whose limits cover a whole account. Every call is checked against the
limits it falls under and forwarded, refused with an honest Retry-After,
or queued until the quota has room; limits are kept in memory or shared
by many instances through Redis.")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)

set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${CMAKE_SOURCE_DIR}/deploy/debian/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_STRIP_FILES ON)
set(CPACK_GENERATOR DEB)
include(CPack)
