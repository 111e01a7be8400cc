# A generated document must be exactly what the program prints today.
#   cmake -DSLUICE=path/to/sluice -DOPTION=--print-metrics -DDOC=docs/metrics.md
#         -P tests/check_doc.cmake
execute_process(COMMAND ${SLUICE} ${OPTION}
                OUTPUT_VARIABLE generated RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "sluice ${OPTION} failed (exit ${rc})")
endif()
file(READ ${DOC} committed)
if(NOT generated STREQUAL committed)
  get_filename_component(name ${DOC} NAME)
  message(FATAL_ERROR "docs/${name} is not what `sluice ${OPTION}` prints: "
          "regenerate it with `build/sluice ${OPTION} > docs/${name}` and "
          "commit the result")
endif()
