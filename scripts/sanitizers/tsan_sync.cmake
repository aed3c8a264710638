# Included after project() by scripts/sanitize.sh tsan (CMAKE_PROJECT_INCLUDE):
# links tsan_sync.cc into every program of the build, and exports its
# definitions so that the shared libraries' calls bind to them too.
find_package(absl CONFIG REQUIRED)
add_library(ps_tsan_sync OBJECT ${CMAKE_CURRENT_LIST_DIR}/tsan_sync.cc)
# The project sets its C++ standard after this file is read.
set_target_properties(ps_tsan_sync PROPERTIES CXX_STANDARD 20)
target_link_libraries(ps_tsan_sync PUBLIC
  absl::synchronization absl::time ${CMAKE_DL_LIBS})

# Runs once the whole tree is configured, over every executable in it.
function(ps_tsan_sync_link_all dir)
  get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
  foreach(target ${targets})
    get_target_property(type ${target} TYPE)
    if(type STREQUAL "EXECUTABLE")
      # Properties, not target_link_libraries: that would clash with the
      # signature the target was linked with.
      set_property(TARGET ${target} APPEND PROPERTY
                   LINK_LIBRARIES ps_tsan_sync)
      set_property(TARGET ${target} APPEND PROPERTY LINK_OPTIONS -rdynamic)
    endif()
  endforeach()
  get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
  foreach(subdir ${subdirs})
    ps_tsan_sync_link_all(${subdir})
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR}
               CALL ps_tsan_sync_link_all ${CMAKE_SOURCE_DIR})
