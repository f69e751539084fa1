"""The stand-in ``pycuda``, ``cuda.bindings.driver`` and ``tensorrt`` offer nothing the
real libraries lack.

A stand-in kinder than the real library hides exactly the bugs it exists to find (an
invented ``Stream.begin_capture`` once hid that ``--cuda-graphs`` could never work).
So every module attribute, class attribute, enum member and instance attribute of the
stand-ins is looked up in the real API:

- pycuda and cuda-bindings: the real modules, built here without a GPU by
  ``tools/pycuda_nogpu.py`` (pycuda's sdist against a generated stub libcuda; cached in
  ``.cache/pycuda-nogpu``, about 3 minutes the first time on 2 cores), listed in their
  venv. The parameters of the stand-in functions must be ones the real signatures
  (docstrings of the compiled bindings) accept.
- tensorrt: ``tensorrt-stubs`` (10.x, as tools/trt_typecheck.py installs them), minus
  what TensorRT 11 removed.

The stand-in's own state lives in ``sim`` or in attributes named ``_standin_*``, which
edgemed never names (checked below).
"""

from __future__ import annotations

import ast
import enum
import inspect
import re
import subprocess
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.engine.standin_trt import (
    Sim,
    add_kernels,
    make_cuda_bindings,
    make_pycuda,
    make_tensorrt,
)
from tools import pycuda_nogpu, trt_typecheck

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = "_standin_"

# What TensorRT 11 removed (DESIGN.md): the stand-in must not offer any of it, so code
# that uses it fails here as it would on 11.
REMOVED_IN_11 = {
    "BuilderFlag": {"FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS",
                    "PREFER_PRECISION_CONSTRAINTS"},
    "IBuilderConfig": {"int8_calibrator"},
    "Builder": {"platform_has_fast_fp16"},
    "ICudaEngine": {"device_memory_size"},
    "": {"IAlgorithmSelector"},
}  # fmt: skip


def _public(names) -> set[str]:
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))}


# Dunder methods that change what a caller can do with an object (int(x), x(...), len,
# indexing, with): the stand-in may define them only where the real class has them.
PROTOCOL = {"__int__", "__index__", "__call__", "__len__", "__getitem__", "__setitem__",
            "__iter__", "__enter__", "__exit__", "__float__", "__bool__"}  # fmt: skip


def _own_protocol(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in (object, int, enum.Enum, enum.IntEnum, enum.IntFlag, enum.Flag):
            continue
        names |= PROTOCOL & set(vars(klass))
    return names


def _is_enum(value: object) -> bool:
    return isinstance(value, enum.EnumMeta)


# -- the real pycuda and cuda-bindings --------------------------------------------------------


@pytest.fixture(scope="session")
def real_api():
    try:
        pycuda_nogpu.ensure(log=lambda *a: None)
        return pycuda_nogpu.api_surface()
    except pycuda_nogpu.Unavailable as exc:
        pytest.skip(f"the real pycuda cannot be built here: {exc}")


def _standin_modules(sim: Sim) -> dict[str, types.ModuleType]:
    modules = {**make_pycuda(sim), **make_cuda_bindings(sim)}
    add_kernels(modules, sim, host=None)  # module_from_file, SourceModule, Function
    return modules


def _problems(standin: types.ModuleType, real: dict) -> list[str]:
    """Every name ``standin`` offers that ``real`` (an api_surface module) lacks."""
    out = []
    for name in sorted(_public(vars(standin))):
        if name not in real:
            out.append(f"{standin.__name__}.{name}: not in the real module")
            continue
        value, entry = getattr(standin, name), real[name]
        if isinstance(value, types.ModuleType):
            continue
        if _is_enum(value):
            extra = set(value.__members__) - set(entry.get("members") or entry.get("attrs", []))
            out += [f"{standin.__name__}.{name}.{m}: no such member" for m in sorted(extra)]
        elif isinstance(value, type):
            attrs = set(entry.get("attrs", []))
            for attr in sorted(_public(dir(value)) | _own_protocol(value)):
                if attr.startswith(PRIVATE):
                    continue
                if attr not in attrs:
                    out.append(f"{standin.__name__}.{name}.{attr}: not in the real class")
                    continue
                if attr.startswith("__"):
                    continue  # protocol methods: their presence is what matters
                out += _signature_problems(
                    f"{standin.__name__}.{name}.{attr}",
                    getattr(value, attr),
                    entry.get("docs", {}).get(attr, ""),
                    entry.get("signatures", {}).get(attr),
                    method=True,
                )
        elif callable(value):
            out += _signature_problems(
                f"{standin.__name__}.{name}", value, entry.get("doc", ""), entry.get("signature")
            )
    return out


_BOOST = re.compile(r"^\w+\((.*)\)\s*->")  # pycuda (Boost.Python): name( (T)a [, (T)b=1]) -> R
_CYTHON = re.compile(r"^\w+\((.*)\)\s*$")  # cuda-bindings: name(a, b: T)


def _real_params(doc: str, signature: str | None) -> tuple[list[str], int] | None:
    """(parameter names, how many are required) of a real callable, or None if its
    docstring shows no signature. Boost's ``argN`` names are positional-only."""
    if signature is not None:
        params = [p.strip() for p in signature.strip("()").split(",") if p.strip()]
        if any(p.startswith("*") for p in params):
            return None  # (*args, **kwargs): anything goes
        names = [p.split("=")[0].split(":")[0].strip() for p in params]
        return names, sum("=" not in p for p in params)
    first = doc.splitlines()[0] if doc else ""
    m = _BOOST.match(first)
    if m:
        text = m.group(1)
        required = text.split("[")[0]
        names = re.findall(r"\(\w+\)\s*(\w+)", text)
        return names, len(re.findall(r"\(\w+\)\s*(\w+)", required))
    m = _CYTHON.match(first)
    if m:
        params = [p.strip() for p in m.group(1).split(",") if p.strip()]
        names = [p.split(":")[0].split("=")[0].split()[-1] for p in params]
        return names, sum("=" not in p for p in params)
    return None


def _signature_problems(
    where: str, fn, doc: str, signature: str | None, method: bool = False
) -> list[str]:
    """The stand-in may accept only calls the real callable accepts: no more parameters,
    keyword names as the real ones (where the real ones have names), no fewer required.
    ``method``: an instance method (both sides' first parameter is the instance)."""
    if not callable(fn) or isinstance(fn, property | type):
        return []
    real = _real_params(doc, signature)
    if real is None:
        return []
    names, required = real
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    if method and params and params[0].name == "self":
        params = params[1:]
        names, required = names[1:], max(0, required - 1)
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return []
    out = []
    if len(params) > len(names):
        out.append(f"{where}: takes {len(params)} parameters, the real one {len(names)}")
    mine_required = sum(p.default is p.empty for p in params)
    if mine_required < required:
        out.append(f"{where}: requires {mine_required} arguments, the real one {required}")
    for p, real_name in zip(params, names, strict=False):
        meaningful = not re.fullmatch(r"arg\d+", real_name)
        if meaningful and p.kind != p.POSITIONAL_ONLY and p.name != real_name:
            out.append(f"{where}: parameter {p.name!r} is {real_name!r} in the real one")
    return out


def test_the_real_pycuda_is_real_and_has_no_capture_api(real_api):
    drv = real_api["modules"]["pycuda.driver"]
    assert real_api["pycuda"] == "2026.1"
    assert _public(drv["Stream"]["attrs"]) == {"handle", "is_done", "synchronize", "wait_for_event"}
    assert not [n for n in drv if re.search(r"graph(?!ics)|captur", n, re.I)]
    cu = real_api["modules"]["cuda.bindings.driver"]
    assert {"cuStreamBeginCapture", "cuStreamEndCapture", "cuGraphInstantiate",
            "cuGraphLaunch", "cuGraphDestroy", "cuGraphExecDestroy"} <= set(cu)  # fmt: skip


def test_standin_pycuda_and_cuda_bindings_offer_only_real_names(real_api):
    modules = _standin_modules(Sim())
    problems = []
    for name in pycuda_nogpu.MODULES:
        problems += _problems(modules[name], real_api["modules"][name])
    assert problems == []


def test_conformance_catches_an_invented_method(real_api, monkeypatch):
    """The check above can fail: a method pycuda lacks, added to the stand-in, is named."""
    modules = _standin_modules(Sim())
    drv = modules["pycuda.driver"]
    monkeypatch.setattr(drv.Stream, "begin_capture", lambda self: None, raising=False)
    monkeypatch.setattr(drv, "memcpy_htod", lambda dest, src, stream=None: None)
    problems = _problems(drv, real_api["modules"]["pycuda.driver"])
    assert "pycuda.driver.Stream.begin_capture: not in the real class" in problems
    assert "pycuda.driver.memcpy_htod: takes 3 parameters, the real one 2" in problems


def _live_objects(sim: Sim, modules) -> list[object]:
    """One instance of each stand-in class, made as edgemed makes them."""
    drv = modules["pycuda.driver"]
    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    try:
        return [
            ctx, drv.Device(0), drv.Stream(), drv.Event(), drv.mem_alloc(16),
            drv.pagelocked_empty((4,), np.float32).base, drv.module_from_file("x.cubin"),
            drv.module_from_file("x.cubin").get_function("f"),
            modules["cuda.bindings.driver"].CUstream(1),
        ]  # fmt: skip
    finally:
        drv.Context.pop()


def test_standin_instances_carry_only_real_or_private_attributes(real_api):
    sim = Sim()
    modules = _standin_modules(sim)
    real = real_api["modules"]
    for obj in _live_objects(sim, modules):
        name = type(obj).__name__
        extra = {k for k in vars(obj) if not k.startswith(PRIVATE)}
        assert extra == set(), f"{name}: {extra}"
        # What edgemed is handed is an instance of a class the real modules have.
        assert any("attrs" in real[m].get(name, {}) for m in real), name  # a real class


def test_the_gpu_extras_install_the_cuda_bindings_that_were_checked():
    text = (ROOT / "pyproject.toml").read_text()
    for extra in ("gpu", "jetson"):
        line = re.search(rf"^{extra} = \[.*\]$", text, re.M)
        assert line and f'"{pycuda_nogpu.CUDA_BINDINGS}"' in line.group(0), extra


# -- tensorrt against tensorrt-stubs ---------------------------------------------------------


@pytest.fixture(scope="session")
def trt_stubs() -> dict[str, set[str]]:
    """Class name -> member names (methods, properties, attributes, enum members,
    nested classes, inherited ones too) of tensorrt-stubs, and "" -> module names."""
    try:
        trt_typecheck.install_stubs()
    except (subprocess.CalledProcessError, SystemExit) as exc:  # pip cannot download them
        pytest.skip(f"tensorrt-stubs cannot be downloaded: {exc}")
    tree = ast.parse((ROOT / ".typings" / "tensorrt_bindings" / "tensorrt.pyi").read_text())
    classes: dict[str, ast.ClassDef] = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

    def members(name: str) -> set[str]:
        node = classes.get(name)
        if node is None:
            return set()
        out: set[str] = set()
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.ClassDef):
                out.add(item.name)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                out.add(item.target.id)
            elif isinstance(item, ast.Assign):
                out |= {t.id for t in item.targets if isinstance(t, ast.Name)}
        for base in node.bases:
            if isinstance(base, ast.Name):
                out |= members(base.id)
        return out

    stubs = {name: members(name) for name in classes}
    top = ast.parse((ROOT / ".typings" / "tensorrt" / "__init__.pyi").read_text())
    names: set[str] = set(classes)
    for node in top.body:
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    stubs[""] = names
    return stubs


def _trt_problems(trt: types.ModuleType, stubs: dict[str, set[str]]) -> list[str]:
    out = []
    for name in sorted(_public(vars(trt))):
        value = getattr(trt, name)
        if name not in stubs[""]:
            out.append(f"tensorrt.{name}: not in tensorrt-stubs")
        elif name in REMOVED_IN_11[""]:
            out.append(f"tensorrt.{name}: removed in TensorRT 11")
        if not isinstance(value, type):
            continue
        real = stubs.get(name, set())
        removed = REMOVED_IN_11.get(name, set())
        own = set(value.__members__) if _is_enum(value) else _public(dir(value))
        for attr in sorted((own | _own_protocol(value)) - {"__version__"}):
            if attr.startswith(PRIVATE):
                continue
            if attr not in real:
                out.append(f"tensorrt.{name}.{attr}: not in tensorrt-stubs")
            elif attr in removed:
                out.append(f"tensorrt.{name}.{attr}: removed in TensorRT 11")
        if name == "ILogger":  # its nested enum
            extra = set(value.Severity.__members__) - stubs.get("ILogger.Severity", real)
            out += [f"tensorrt.ILogger.Severity.{m}: not in tensorrt-stubs" for m in extra]
    return out


def test_standin_tensorrt_offers_only_what_tensorrt_10_and_11_share(trt_stubs):
    sim = Sim()
    trt = make_tensorrt(sim, make_pycuda(sim)["pycuda.driver"])
    assert _trt_problems(trt, trt_stubs) == []


def test_trt_conformance_catches_invented_and_removed_names(trt_stubs, monkeypatch):
    sim = Sim()
    trt = make_tensorrt(sim, make_pycuda(sim)["pycuda.driver"])
    monkeypatch.setattr(
        trt.IExecutionContext, "execute_async_v4", lambda self, s: True, raising=False
    )
    monkeypatch.setattr(trt.Builder, "platform_has_fast_fp16", True, raising=False)
    problems = _trt_problems(trt, trt_stubs)
    assert "tensorrt.IExecutionContext.execute_async_v4: not in tensorrt-stubs" in problems
    assert "tensorrt.Builder.platform_has_fast_fp16: removed in TensorRT 11" in problems


def test_standin_tensorrt_instances_carry_only_real_or_private_attributes(trt_stubs, tmp_path):
    """A whole build and load through the stand-in: every object it hands out."""
    sim = Sim()
    drv = make_pycuda(sim)["pycuda.driver"]
    trt = make_tensorrt(sim, drv)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                                "g", [x], [y]))  # fmt: skip
    model.opset_import[0].version, model.ir_version = 17, 8
    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    try:
        logger = trt.ILogger()
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        assert parser.parse(onnx._serialize(model) if hasattr(onnx, "_serialize") else
                            model.SerializeToString())  # fmt: skip
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        profile.set_shape("x", (1, 2), (2, 2), (4, 2))
        config.add_optimization_profile(profile)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
        plan = builder.build_serialized_network(network, config)
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        context = engine.create_execution_context()
        objects = [logger, builder, network, network.get_input(0), parser, config, profile,
                   cache, trt.Runtime(logger), engine, context, trt.Dims((1, 2))]  # fmt: skip
    finally:
        drv.Context.pop()
    for obj in objects:
        name = type(obj).__name__
        extra = {k for k in vars(obj) if not k.startswith(PRIVATE)} - trt_stubs.get(name, set())
        assert extra == set(), f"{name}: {extra}"


# -- edgemed never reaches into the stand-ins' private state --------------------------------


def test_edgemed_never_names_standin_state():
    hits = [
        str(p.relative_to(ROOT))
        for p in list((ROOT / "edgemed").rglob("*.py")) + list((ROOT / "export").rglob("*.py"))
        if PRIVATE in p.read_text(encoding="utf-8")
    ]
    assert hits == []
