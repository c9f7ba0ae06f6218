"""The Slicer extension's CMake files and catalog entry: what a Slicer build would package.

A .py file or resource that a module's CMakeLists.txt does not list is silently left out of the Extension Manager
package (the module then fails to import on users' machines only), so every file on disk must be listed here.
"""

import json
import os
import re
import struct

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("SSLSegmentation", "SSLPretrain")
LIBRARY = "SSLCommon"  # the code both modules share: SSLCommon/SSLCommonLib, packaged like a module without one
# keys allowed by Slicer's slicer-extension-catalog-entry-schema-v1.0.1.json (additionalProperties: false)
CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                "build_subdirectory", "enabled", "tier"}


def _read(*parts):
    with open(os.path.join(REPO_ROOT, *parts), encoding="utf-8") as stream:
        return stream.read()


def _strip_comments(text):
    return "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#") else "" for line in text.splitlines())


def _set_variables(cmake_text):
    """``set(NAME value...)`` -> {NAME: [values]} (quotes removed; the simple forms our CMake files use)."""
    variables = {}
    for name, body in re.findall(r"\bset\(\s*(\w+)(.*?)\)", _strip_comments(cmake_text), flags=re.S):
        values = re.findall(r'"([^"]*)"|(\S+)', body)
        variables[name] = [quoted or bare for quoted, bare in values]
    return variables


def _expand(value, variables):
    return re.sub(r"\$\{(\w+)\}", lambda m: " ".join(variables.get(m.group(1), [m.group(0)])), value)


def _module_lists(module):
    text = _read(module, "CMakeLists.txt")
    variables = _set_variables(text)
    assert variables.get("MODULE_NAME") == [module]
    call = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", _strip_comments(text), flags=re.S)
    assert call, f"{module}/CMakeLists.txt does not call slicerMacroBuildScriptedModule"
    arguments = call.group(1).split()
    assert arguments[:2] == ["NAME", "${MODULE_NAME}"]
    # Slicer's generic module tests load the module by name: a library has none to load
    assert ("WITH_GENERIC_TESTS" in arguments) == (module != LIBRARY)
    assert arguments[arguments.index("SCRIPTS") + 1] == "${MODULE_PYTHON_SCRIPTS}"
    assert arguments[arguments.index("RESOURCES") + 1] == "${MODULE_PYTHON_RESOURCES}"
    scripts = [_expand(v, variables) for v in variables["MODULE_PYTHON_SCRIPTS"]]
    resources = [_expand(v, variables) for v in variables["MODULE_PYTHON_RESOURCES"]]
    return scripts, resources


def _files_under(folder, keep):
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__" and not d.startswith(".")]
        for name in files:
            if keep(name):
                found.append(os.path.relpath(os.path.join(directory, name), folder).replace(os.sep, "/"))
    return sorted(found)


@pytest.mark.parametrize("module", MODULES + (LIBRARY,))
def test_module_lists_every_python_file_and_resource(module):
    scripts, resources = _module_lists(module)
    folder = os.path.join(REPO_ROOT, module)
    assert len(set(scripts)) == len(scripts), f"{module}: a script is listed twice"
    assert len(set(resources)) == len(resources), f"{module}: a resource is listed twice"
    missing_on_disk = [f for f in scripts + resources if not os.path.isfile(os.path.join(folder, f))]
    assert not missing_on_disk, f"{module}/CMakeLists.txt lists files that do not exist (CMake fails): {missing_on_disk}"

    on_disk = _files_under(folder, lambda name: name.endswith(".py"))
    unlisted = sorted(set(on_disk) - set(scripts))
    assert not unlisted, (f"{module}: add these to MODULE_PYTHON_SCRIPTS in {module}/CMakeLists.txt or they are "
                          f"not packaged: {unlisted}")
    resource_files = ["Resources/" + f for f in _files_under(os.path.join(folder, "Resources"), lambda name: True)]
    unlisted = sorted(set(resource_files) - set(resources))
    assert not unlisted, f"{module}: add these to MODULE_PYTHON_RESOURCES in {module}/CMakeLists.txt: {unlisted}"

    assert f"{module}Lib/__init__.py" in scripts
    if module == LIBRARY:
        # a library, not a module: no module file (Slicer would list a module "SSLCommon"), nothing but its package
        assert not os.path.exists(os.path.join(folder, f"{module}.py")) and not resources
        assert all(script.startswith(f"{module}Lib/") for script in scripts)
        return
    assert f"Resources/Icons/{module}.png" in resources
    assert scripts[0] == f"{module}.py", "the module file comes first"


def _png_size(path):
    with open(path, "rb") as stream:
        header = stream.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_top_level_extension_metadata():
    text = _read("CMakeLists.txt")
    code = _strip_comments(text)
    variables = _set_variables(text)
    assert re.search(r"^project\(SSLSegmentation\)", code, flags=re.M)
    assert variables["EXTENSION_DEPENDS"] == ["PyTorch"]
    assert variables["EXTENSION_CATEGORY"] == ["Segmentation"]
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL"):
        assert variables.get(name) and variables[name][0].strip(), f"{name} is empty"
    assert "EXTENSION_SCREENSHOTURLS" in variables
    assert variables["EXTENSION_HOMEPAGE"][0].startswith("https://github.com/")
    assert variables["EXTENSION_HOMEPAGE"][0].startswith("https://")
    # the icon URL points at the icon in this repository
    icon_url = variables["EXTENSION_ICONURL"][0]
    assert icon_url.endswith("/Resources/Icons/SSLSegmentation.png")
    assert _png_size(os.path.join(REPO_ROOT, "Resources", "Icons", "SSLSegmentation.png")) == (128, 128)
    # screenshots: raw URLs of PNGs in this repository (the homepage's raw files at the catalog's revision)
    screenshots = " ".join(variables["EXTENSION_SCREENSHOTURLS"]).split()
    assert screenshots, "EXTENSION_SCREENSHOTURLS is empty: the Extensions Index needs at least one screenshot"
    raw = _raw_prefix(variables)
    assert icon_url.startswith(raw), (icon_url, raw)
    for url in screenshots:
        assert url.startswith(raw + "Resources/Screenshots/") and url.endswith(".png"), url
        width, height = _png_size(os.path.join(REPO_ROOT, url[len(raw):]))
        assert width >= 400 and height >= 300, (url, width, height)
    assert any(url.endswith("-uncertainty.png") for url in screenshots)

    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(SSLCommon)",
             "add_subdirectory(SSLSegmentation)", "add_subdirectory(SSLPretrain)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
             "include(${Slicer_EXTENSION_CPACK})"]
    positions = [code.find(statement) for statement in order]
    assert -1 not in positions, [s for s, p in zip(order, positions) if p == -1]
    assert positions == sorted(positions), "statements out of order"
    # every module folder with a CMakeLists.txt is added
    for entry in os.listdir(REPO_ROOT):
        if os.path.isfile(os.path.join(REPO_ROOT, entry, "CMakeLists.txt")):
            assert f"add_subdirectory({entry})" in code


def _raw_prefix(variables):
    """``https://raw.githubusercontent.com/<owner>/<repo>/<revision>/`` for the homepage and the catalog's revision."""
    homepage = variables["EXTENSION_HOMEPAGE"][0].rstrip("/")
    revision = json.loads(_read("SSLSegmentation.json"))["scm_revision"]
    return homepage.replace("https://github.com/", "https://raw.githubusercontent.com/") + f"/{revision}/"


@pytest.mark.parametrize("module", MODULES)
def test_module_tests_are_registered_with_ctest(module):
    """WITH_GENERIC_TESTS adds only Slicer's generic tests: the module's own ScriptedLoadableModuleTest runs under
    ctest only through slicer_add_python_unittest, inside if(BUILD_TESTING)."""
    code = _strip_comments(_read(module, "CMakeLists.txt"))
    block = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", code, flags=re.S)
    assert block, f"{module}/CMakeLists.txt has no if(BUILD_TESTING) block"
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", block.group(1))
    assert code.index("slicerMacroBuildScriptedModule(") < code.index("if(BUILD_TESTING)")
    assert re.search(rf"^class {module}Test\(ScriptedLoadableModuleTest\):", _read(module, f"{module}.py"),
                     flags=re.M)
    # ctest starts a bare Slicer: the test installs the engine's packages itself before it runs (setUp)
    import ast

    tree = ast.parse(_read(module, f"{module}.py"))
    (testClass,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == f"{module}Test"]
    (setUp,) = [node for node in testClass.body if isinstance(node, ast.FunctionDef) and node.name == "setUp"]
    calls = [node.func.id for node in ast.walk(setUp) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    assert calls[:1] == ["installForSelfTest"], calls
    run = [node for node in testClass.body if isinstance(node, ast.FunctionDef) and node.name == "runTest"]
    assert run and any(isinstance(node, ast.Attribute) and node.attr == "setUp" for node in ast.walk(run[0]))


def test_license_is_apache_2():
    """The Extensions Index asks for a license file in the repository root; the extension uses Apache-2.0 (as
    pyproject.toml declares), the text Slicer extensions commonly ship."""
    text = _read("LICENSE")
    head = " ".join(text.split()[:6])
    assert head == "Apache License Version 2.0, January 2004", head
    for clause in ("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "1. Definitions.",
                   "2. Grant of Copyright License.", "3. Grant of Patent License.", "4. Redistribution.",
                   "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS",
                   "http://www.apache.org/licenses/LICENSE-2.0"):
        assert clause in text, clause
    assert re.search(r'^license\s*=\s*"Apache-2\.0"', _read("pyproject.toml"), flags=re.M)


def test_engine_is_installed_with_the_extension():
    """`import sslseg` must work inside Slicer: the package goes into the qt-scripted-modules folder (on sys.path
    when Slicer loads the extension's modules), in the build tree and in the install tree."""
    code = _strip_comments(_read("CMakeLists.txt"))
    globs = dict(re.findall(r"file\(GLOB_RECURSE\s+(\w+)\s+RELATIVE\s+\$\{CMAKE_CURRENT_SOURCE_DIR\}"
                            r"\s+CONFIGURE_DEPENDS\s+(\S+)\s*\)", code))
    assert globs.get("SSLSEG_ENGINE_SCRIPTS") == "${CMAKE_CURRENT_SOURCE_DIR}/sslseg/*.py"
    assert globs.get("SSLSEG_ENGINE_RESOURCES") == "${CMAKE_CURRENT_SOURCE_DIR}/sslseg/*.json"
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\n\s*\)", code, flags=re.S)
    assert call, "no install rule for the engine package"
    arguments = call.group(1).split()
    assert arguments[arguments.index("SCRIPTS") + 1] == '"${SSLSEG_ENGINE_SCRIPTS}"'
    assert arguments[arguments.index("RESOURCES") + 1] == '"${SSLSEG_ENGINE_RESOURCES}"'
    assert arguments[arguments.index("DESTINATION_DIR") + 1] == "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"
    assert arguments[arguments.index("INSTALL_DIR") + 1] == "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    assert "NO_INSTALL_SUBDIR" in arguments  # keeps the sslseg/... relative paths
    # the globs cover every file the engine needs at run time (a new data file type must be added to CMake)
    others = _files_under(os.path.join(REPO_ROOT, "sslseg"), lambda name: not name.endswith((".py", ".pyc", ".json")))
    assert not others, f"sslseg holds files the CMake install rule does not package: {others}"


def test_catalog_entry():
    entry = json.loads(_read("SSLSegmentation.json"))
    assert set(entry) <= CATALOG_KEYS, set(entry) - CATALOG_KEYS
    for key in ("$schema", "category", "scm_url", "scm_revision", "build_dependencies"):
        assert entry.get(key), key
    # tier (schema: integer 1..5, default 1): 1 = experimental, 3 = community-supported, 5 = Slicer core
    assert isinstance(entry.get("tier"), int) and entry["tier"] in (1, 3, 5), entry.get("tier")
    assert "slicer-extension-catalog-entry-schema" in entry["$schema"]
    variables = _set_variables(_read("CMakeLists.txt"))
    assert entry["category"] == variables["EXTENSION_CATEGORY"][0]
    assert entry["build_dependencies"] == variables["EXTENSION_DEPENDS"]
    assert entry["scm_url"] == variables["EXTENSION_HOMEPAGE"][0]
    assert entry.get("build_subdirectory", ".") == "."


# A stand-in for an installed Slicer (SlicerConfig.cmake + the two macros our CMake files call), so that CMake
# itself evaluates our files: syntax, variable expansion, and the same existence check the real
# slicerMacroBuildScriptedModule does. The real macros are in Slicer's CMake/ folder; they need a Slicer build.
_STUB_CONFIG = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
"""
_STUB_USE_FILE = """
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.9/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f ${MY_SCRIPTS} ${MY_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file ${f}")
    endif()
  endforeach()
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "module|${MY_NAME}|${MY_SCRIPTS}|${MY_RESOURCES}\\n")
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT})
    message(FATAL_ERROR "slicer_add_python_unittest given nonexistent script ${MY_SCRIPT}")
  endif()
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "unittest|${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT}||\\n")
endfunction()
function(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR" "TARGET_NAME;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "engine|${MY_TARGET_NAME}|${MY_SCRIPTS}|${MY_RESOURCES}\\n")
endfunction()
"""


def test_cmake_configures_with_a_slicer_stand_in(tmp_path):
    import shutil
    import subprocess

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("needs the cmake program to evaluate the CMake files")
    stub = tmp_path / "Slicer"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(_STUB_CONFIG)
    (stub / "UseSlicer.cmake").write_text(_STUB_USE_FILE)
    (stub / "Empty.cmake").write_text("")
    build = tmp_path / "build"
    result = subprocess.run([cmake, "-S", REPO_ROOT, "-B", str(build), f"-DSlicer_DIR={stub}", "-DBUILD_TESTING=ON"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [line.split("|") for line in (build / "record.txt").read_text().splitlines()]
    modules = {name: scripts.split(";") for kind, name, scripts, _ in records if kind == "module"}
    unittests = sorted(os.path.relpath(name, REPO_ROOT) for kind, name, _, _ in records if kind == "unittest")
    assert unittests == sorted(os.path.join(module, f"{module}.py") for module in MODULES)
    assert set(modules) == set(MODULES + (LIBRARY,))
    for module in MODULES + (LIBRARY,):
        assert modules[module] == _module_lists(module)[0]
    (engine,) = [(scripts.split(";"), resources.split(";")) for kind, _, scripts, resources in records
                 if kind == "engine"]
    engine_dir = os.path.join(REPO_ROOT, "sslseg")
    assert sorted(engine[0]) == ["sslseg/" + f for f in _files_under(engine_dir, lambda n: n.endswith(".py"))]
    assert sorted(r for r in engine[1] if r) == ["sslseg/" + f for f in
                                                 _files_under(engine_dir, lambda n: n.endswith(".json"))]
