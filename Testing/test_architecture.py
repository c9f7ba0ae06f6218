"""The engine's structure: no import cycle among ``sslseg`` modules nor among the Slicer libraries
(``SSLCommonLib``, ``SSLSegmentationLib``, ``SSLPretrainLib``), the Slicer libraries layered (the shared one imports
neither module's, the modules not each other's, the engine none of them), imports without side effects, and a
weight-name layout per network family that names every tensor of that family's networks exactly once.

The import graph is read from the source with ``ast`` (module-level and function-level imports alike: an import
deferred into a function still ties the two modules together). ``from sslseg import X`` of a name in the lazy
API map of ``sslseg/__init__.py`` counts as an import of the module that provides X.
"""

import ast
import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "sslseg"


# --- the import graph ----------------------------------------------------------------------------------------------

# (folder on sys.path, package) of the Slicer libraries, as Slicer's qt-scripted-modules folder holds them
SLICER_LIBRARIES = (("SSLCommon", "SSLCommonLib"), ("SSLSegmentation", "SSLSegmentationLib"),
                    ("SSLPretrain", "SSLPretrainLib"))


def _module_files(root: str = REPO_ROOT, package: str = PACKAGE) -> dict:
    """``{dotted module name: (path, is_package)}`` for every .py file under ``root``/``package``."""
    modules = {}
    for directory, subdirectories, files in os.walk(os.path.join(root, package)):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            parts = os.path.relpath(os.path.join(directory, name), root)[:-3].split(os.sep)
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (os.path.join(directory, name), is_package)
    return modules


def _slicer_module_files() -> dict:
    """The Slicer libraries' modules, and the module files beside them (``SSLSegmentation.py`` ...)."""
    modules = {}
    for folder, package in SLICER_LIBRARIES:
        root = os.path.join(REPO_ROOT, folder)
        modules.update(_module_files(root, package))
        if os.path.isfile(os.path.join(root, f"{folder}.py")):
            modules[folder] = (os.path.join(root, f"{folder}.py"), False)
    return modules


def _lazy_api_map(init_path: str) -> dict:
    """``{name: module}`` from the ``_LAZY = {name: (module, attribute)}`` map of the package's ``__init__``."""
    tree = ast.parse(open(init_path, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return {name: module for name, (module, _) in ast.literal_eval(node.value).items()}
    return {}


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module named by ``from <...> import`` (relative levels resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports_of(module: str, path: str, is_package: bool, known: set, lazy: dict) -> set:
    """The sslseg modules ``module`` imports anywhere in its source."""
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), filename=path)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(module, is_package, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:
                    targets.add(submodule)            # from package import submodule
                elif source == PACKAGE and alias.name in lazy:
                    targets.add(lazy[alias.name])     # from sslseg import <lazy API name>
                else:
                    targets.add(source)
    return {target for target in targets if target in known and target != module}


def import_graph(slicer: bool = False) -> dict:
    """The import graph of ``sslseg``'s modules; with ``slicer``, of the Slicer libraries' modules and the engine's
    together (edges between them included)."""
    modules = _module_files()
    lazy = _lazy_api_map(modules[PACKAGE][0])
    if slicer:
        modules.update(_slicer_module_files())
    return {module: _imports_of(module, path, is_package, set(modules), lazy)
            for module, (path, is_package) in modules.items()}


def _top(module: str) -> str:
    return module.split(".")[0]


def find_cycle(graph: dict):
    """One cycle as a list of modules (first == last), or None (iterative depth-first search)."""
    state = {}   # module -> "open" while on the current path, "done" afterwards
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = "open"
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(following) == "open":
                return path[path.index(following):] + [following]
            elif following not in state:
                state[following] = "open"
                path.append(following)
                stack.append(iter(sorted(graph[following])))
    return None


def test_graph_reader_sees_function_level_relative_and_lazy_imports():
    graph = import_graph()
    # the reader must see what the cycle test relies on, or that test could pass vacuously
    assert "sslseg.networks.resenc" in graph["sslseg.networks"]              # relative, module level
    assert "sslseg.backbones.nnssl" in graph["sslseg.backbones.reading"]     # relative, inside a function
    assert "sslseg.networks" in graph["sslseg.backbones.nnssl"]              # absolute, inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert _lazy_api_map(_module_files()[PACKAGE][0])["load_backbone"] == "sslseg.backbones"


def test_no_import_cycle_among_sslseg_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_graph_reader_sees_the_slicer_libraries():
    graph = import_graph(slicer=True)
    assert "SSLCommonLib.parameterFields" in graph["SSLPretrainLib.parameters"]      # absolute, module level
    assert "SSLPretrainLib.parameters" in graph["SSLPretrainLib.pretrainLogic"]      # relative, inside a function
    assert "SSLCommonLib.nodeBridge" in graph["SSLSegmentationLib.resultNodes"]
    assert "SSLSegmentationLib.segmentationLogic" in graph["SSLSegmentation"]        # the module file
    assert "sslseg.pretraining.config" in graph["SSLPretrainLib.pretrainLogic"]      # into the engine


def test_no_import_cycle_among_the_slicer_libraries():
    """SSLPretrainLib.parameters and pretrainLogic imported each other (parameters took the network list from the
    logic, the logic's getParameterNode the parameter class): the parameters now take the engine's list."""
    cycle = find_cycle(import_graph(slicer=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_slicer_libraries_are_layered():
    """The shared library imports neither module's library; the two modules' libraries do not import each other;
    the engine imports none of them."""
    allowed = {"sslseg": {"sslseg"}, "SSLCommonLib": {"sslseg", "SSLCommonLib"},
               "SSLSegmentationLib": {"sslseg", "SSLCommonLib", "SSLSegmentationLib"},
               "SSLSegmentation": {"sslseg", "SSLCommonLib", "SSLSegmentationLib"},
               "SSLPretrainLib": {"sslseg", "SSLCommonLib", "SSLPretrainLib"},
               "SSLPretrain": {"sslseg", "SSLCommonLib", "SSLPretrainLib"}}
    wrong = sorted(f"{module} -> {target}" for module, targets in import_graph(slicer=True).items()
                   for target in targets if _top(target) not in allowed[_top(module)])
    assert not wrong, wrong


# --- imports without side effects ----------------------------------------------------------------------------------

def _modules_after(statement: str) -> list:
    """The sslseg modules (and whether torch) loaded in a fresh interpreter after ``statement``."""
    code = (f"import sys; {statement}; import json; "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'sslseg')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_sslseg_loads_nothing_else():
    assert _modules_after("import sslseg") == ["sslseg"]


def test_import_networks_loads_no_backbones_no_torch_no_fmunet():
    loaded = _modules_after("import sslseg.networks")
    assert not any(m.startswith("sslseg.backbones") for m in loaded), loaded
    assert "torch" not in loaded                  # the Slicer panels read architecture lists before torch exists
    assert "sslseg.networks.fmunet" not in loaded  # a family's network code loads when one is built
    # asking for a family's spec or kwargs still needs no torch
    loaded = _modules_after("from sslseg.networks import spec_for, architecture_kwargs; spec_for('ResEncL')")
    assert "torch" not in loaded


# --- weight-name layouts -------------------------------------------------------------------------------------------

def _tiny_networks():
    from sslseg.networks import build_from_spec, spec_for

    fmunet = {"family": "FMUNet", "name": "FMUNet", "config": {"feature_chns": [4, 8, 16], "dropout": 0.0,
                                                               "depth": 1}}
    fmunet_deep = {"family": "FMUNet", "name": "FMUNet", "config": {**fmunet["config"], "deep_supervision": True}}
    return [(spec, build_from_spec(spec, in_channels=2, num_classes=3))
            for spec in (spec_for("ResEncT-test"), spec_for("ResEncXS-cpu"), fmunet, fmunet_deep)]


@pytest.mark.parametrize("index", range(4))
def test_layout_covers_every_state_dict_key_exactly_once(index):
    from sslseg.networks import PARTS, layout_of

    spec, network = _tiny_networks()[index]
    layout = layout_of(spec)
    seen = {part: 0 for part in PARTS}
    for key in network.state_dict():
        matches = layout.matching_parts(key)
        assert len(matches) == 1, f"{spec['family']}: {key} is in {matches or 'no part'}"
        assert layout.part_of(key) == matches[0]
        seen[matches[0]] += 1
    assert all(seen.values()), seen   # every part of the layout names real tensors
    assert layout.part_of("not.a.tensor") == "other"


def test_split_parameters_follows_the_layout():
    from sslseg.networks import layout_of, split_parameters

    for spec, network in _tiny_networks():
        layout = layout_of(spec)
        encoder, decoder = split_parameters(network, spec)
        assert {layout.part_of(name) for name, _ in encoder} == {"stem", "encoder"}
        assert {layout.part_of(name) for name, _ in decoder} == {"decoder", "head"}
        assert len(encoder) + len(decoder) == len(list(network.parameters()))


def test_resenc_layout_agrees_with_dynamic_network_architectures():
    # dynamic-network-architectures' ResidualEncoderUNet names its stem, encoder and input projection itself
    from sslseg.networks import build_network, layout_of, spec_for

    network = build_network("ResEncT-test")
    layout = layout_of(spec_for("ResEncT-test"))
    assert layout.part_of(network.key_to_stem + ".convs.0.conv.weight") == "stem"
    assert layout.part_of(network.key_to_encoder + ".0.blocks.0.conv1.conv.weight") == "encoder"
    assert tuple(layout.in_proj) == tuple(network.keys_to_in_proj)
