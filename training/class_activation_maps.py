"""Add a class-activation-map output to an exported classifier graph (ONNX graph surgery).

    .venv/bin/python -m training.class_activation_maps models/<name> [...]   # or: all

A network that ends in global average pooling and one linear layer has an exact class activation map
(Zhou et al., CVPR 2016): for class c, ``CAM_c(x, y) = sum_k w_ck F_k(x, y) + b_c`` over the last
convolution's features F, and the class logit is the spatial mean of its map. This module finds every
``GlobalAveragePool`` (or spatial ``ReduceMean``) → ``Flatten`` → ``Gemm`` head of the graph, applies the
Gemm's weights and bias as a 1x1 ``Conv`` to the pool's input, then replays the nodes that combine the heads'
logits into ``logits`` (ensemble mean, folded temperature) on the maps, so the maps are combined exactly as
the logits are. The result is a second graph output ``class_activation_maps`` (N, classes, h, w); the
``logits`` output and every node and initializer it depends on stay byte-for-byte as they were.

The CLI rewrites the float32 graph (``model-fp32.onnx``, or ``model.onnx`` before ``training.quantize`` ran) in
place (an existing map output is replaced, not duplicated) and checks,
on the model's test images when the data are present (else on random inputs), that the logits did not
change and that each map's spatial mean equals its logit. It then writes the card's ``heatmap`` section
(keeping a ``faithfulness`` result already there, which ``training.heatmap_faithfulness`` fills) and its
``file_size_bytes``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import data as D
from .test_split import load_test_split, missing_files

OUTPUT = "class_activation_maps"
LOGITS = "logits"
PREFIX = "/class_activation_maps/"
# Ops that combine the heads' logits and act on the maps unchanged when their axes are non-negative (the
# maps only add trailing spatial axes) and their other operands are single numbers.
REPLAYABLE = {"Unsqueeze", "Concat", "ReduceMean", "Mul", "Div"}


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if tensor in node.input]


def _ancestors(graph: onnx.GraphProto, outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes the given tensors depend on, in graph order."""
    producers = _producers(graph)
    needed: set[int] = set()
    stack = [producers[o] for o in outputs if o in producers]
    while stack:
        node = stack.pop()
        if id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(producers[i] for i in node.input if i in producers)
    return [node for node in graph.node if id(node) in needed]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
    return values


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def strip_class_activation_maps(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without the map output and without the nodes and initializers only it used."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    kept_outputs = [o for o in graph.output if o.name != OUTPUT]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    live = _ancestors(graph, [o.name for o in graph.output])
    del graph.node[:]
    graph.node.extend(live)
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [vi for vi in graph.value_info if vi.name != OUTPUT]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return stripped


def _heads(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(pool, Gemm) of every global-average-pool → Flatten → Gemm head that ``logits`` depends on."""
    heads = []
    for node in _ancestors(graph, [LOGITS]):
        spatial_mean = node.op_type == "GlobalAveragePool" or (
            node.op_type == "ReduceMean" and sorted(_attribute(node, "axes", [])) in ([2, 3], [-2, -1]))
        if not spatial_mean:
            continue
        flatten = _consumers(graph, node.output[0])
        if len(flatten) != 1 or flatten[0].op_type != "Flatten" or _attribute(flatten[0], "axis", 1) != 1:
            raise ValueError(f"{node.name}: the pool is not followed by Flatten(axis=1) alone")
        gemm = _consumers(graph, flatten[0].output[0])
        if len(gemm) != 1 or gemm[0].op_type != "Gemm":
            raise ValueError(f"{flatten[0].name}: Flatten is not followed by one Gemm")
        heads.append((node, gemm[0]))
    if not heads:
        raise ValueError("no GlobalAveragePool → Flatten → Gemm head found")
    return heads


def _head_conv(graph: onnx.GraphProto, pool: onnx.NodeProto, gemm: onnx.NodeProto, index: int,
               constants: dict[str, np.ndarray]) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """A 1x1 Conv with the Gemm's weights and bias, applied to the pool's input."""
    weight = constants[gemm.input[1]].astype(np.float32)
    if not _attribute(gemm, "transB", 0):
        weight = weight.T
    weight = weight * float(_attribute(gemm, "alpha", 1.0))
    bias = constants[gemm.input[2]] if len(gemm.input) > 2 else np.zeros(weight.shape[0], np.float32)
    bias = np.broadcast_to(bias * float(_attribute(gemm, "beta", 1.0)), weight.shape[:1])
    name = f"{PREFIX}head{index}"
    inits = [numpy_helper.from_array(weight[:, :, None, None].astype(np.float32), f"{name}/weight"),
             numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), f"{name}/bias")]
    conv = helper.make_node("Conv", [pool.input[0], f"{name}/weight", f"{name}/bias"], [f"{name}/map"],
                            name=f"{name}/Conv", kernel_shape=[1, 1])
    return conv, inits


def _replay(node: onnx.NodeProto, renamed: dict[str, str], constants: dict[str, np.ndarray]) -> onnx.NodeProto:
    """``node`` acting on the maps instead of the logits; raises where that would not be exact."""
    if node.op_type not in REPLAYABLE:
        raise ValueError(f"{node.name}: {node.op_type} between the heads and the logits is not supported")
    for name in node.input:
        if name in renamed:
            continue
        if name not in constants:
            raise ValueError(f"{node.name}: input {name} is neither a head's logits nor a constant")
        if node.op_type in ("Mul", "Div") and constants[name].size != 1:
            raise ValueError(f"{node.name}: multiplies by a non-scalar {name}")
        if node.op_type == "Unsqueeze" and (constants[name] < 0).any():
            raise ValueError(f"{node.name}: negative axes")
    axes = _attribute(node, "axes", []) if node.op_type == "ReduceMean" else [_attribute(node, "axis", 0)]
    if node.op_type in ("Concat", "ReduceMean") and (not axes or min(axes) < 0):
        raise ValueError(f"{node.name}: negative or missing axes")
    clone = onnx.NodeProto()
    clone.CopyFrom(node)
    clone.name = PREFIX + node.name.lstrip("/")
    del clone.input[:]
    clone.input.extend(renamed.get(name, name) for name in node.input)
    del clone.output[:]
    clone.output.extend(OUTPUT if out == LOGITS else PREFIX + out.lstrip("/") for out in node.output)
    return clone


def _map_shape(model: onnx.ModelProto, feature: str) -> tuple[int, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in inferred.graph.value_info:
        if info.name == feature:
            dims = info.type.tensor_type.shape.dim
            return dims[2].dim_value, dims[3].dim_value
    raise ValueError(f"shape of {feature} could not be inferred")


def add_class_activation_maps(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with the output ``class_activation_maps`` (N, classes, h, w) after ``logits``.

    Parameters
    ----------
    model
        An exported classifier whose ``logits`` come from GlobalAveragePool → Flatten → Gemm heads, combined
        by ops in ``REPLAYABLE`` (one network, a mean ensemble, a folded temperature). A map output it
        already has is replaced.

    Returns
    -------
    onnx.ModelProto
        The same graph with the map nodes appended; ``logits`` and its nodes are unchanged.
    """
    result = strip_class_activation_maps(model)
    graph = result.graph
    constants = _constants(graph)
    heads = _heads(graph)
    renamed: dict[str, str] = {}
    new_nodes, new_inits = [], []
    for index, (pool, gemm) in enumerate(heads):
        conv, inits = _head_conv(graph, pool, gemm, index, constants)
        new_nodes.append(conv)
        new_inits.extend(inits)
        renamed[gemm.output[0]] = conv.output[0]
    gemms = {id(gemm) for _, gemm in heads}
    for node in _ancestors(graph, [LOGITS]):
        if id(node) not in gemms and any(name in renamed for name in node.input):
            clone = _replay(node, renamed, constants)
            new_nodes.append(clone)
            renamed.update(zip(node.output, clone.output, strict=True))
    if renamed.get(LOGITS) != OUTPUT:
        raise ValueError("the heads do not lead to the logits output")
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    logits_info = next(o for o in graph.output if o.name == LOGITS)
    batch, classes = logits_info.type.tensor_type.shape.dim
    rows, columns = _map_shape(result, heads[0][0].input[0])
    graph.output.append(helper.make_tensor_value_info(
        OUTPUT, onnx.TensorProto.FLOAT, [batch.dim_param or batch.dim_value, classes.dim_value, rows, columns]))
    onnx.checker.check_model(result)
    return result


def logits_nodes_unchanged(old: onnx.ModelProto, new: onnx.ModelProto) -> bool:
    """True when ``logits``, its nodes and their initializers are byte-for-byte the same in both models."""
    def serialised(model: onnx.ModelProto) -> list[bytes]:
        graph = model.graph
        nodes = _ancestors(graph, [LOGITS])
        used = {i for node in nodes for i in node.input}
        return ([node.SerializeToString() for node in nodes]
                + [init.SerializeToString() for init in graph.initializer if init.name in used]
                + [o.SerializeToString() for o in graph.output if o.name == LOGITS])

    return serialised(old) == serialised(new)


def _check_inputs(folder: Path, random_rows: int) -> tuple[np.ndarray, str]:
    """The model's test images when the data are present, else ``random_rows`` random inputs."""
    if D.data_dir().is_dir() and not missing_files(folder):
        return load_test_split(folder).x, "test images"
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    shape = (random_rows, card["input"]["channels"], card["input"]["height"], card["input"]["width"])
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32), "random inputs (no data)"


def _run(path: Path, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = [session.run(outputs, {"input": x[i:i + 64]}) for i in range(0, len(x), 64)]
    return [np.concatenate([b[k] for b in batches]) for k in range(len(outputs))]


def rewrite(folder: Path) -> None:
    """Add (or replace) the map output of the float32 graph in place and print the checks.

    The float32 graph is ``model-fp32.onnx`` once ``training.quantize`` has run (``model.onnx`` is then the shipped,
    possibly int8, file made from it, and must be remade: ``python -m training.quantize <name>``), else ``model.onnx``.
    """
    path = folder / "model-fp32.onnx"
    if not path.exists():
        path = folder / "model.onnx"
    old = onnx.load(str(path))
    new = add_class_activation_maps(old)
    if not logits_nodes_unchanged(old, new):
        raise RuntimeError(f"{path}: the logits nodes changed")
    x, source = _check_inputs(folder, 64)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model.onnx"
        onnx.save(new, str(candidate))
        (old_logits,) = _run(path, x, [LOGITS])
        logits, maps = _run(candidate, x, [LOGITS, OUTPUT])
        logits_diff = float(np.abs(logits - old_logits).max())
        mean_diff = float(np.abs(maps.mean(axis=(2, 3)) - logits).max())
        if logits_diff != 0.0 or mean_diff > 1e-4:
            raise RuntimeError(f"{path}: logits differ by {logits_diff}, map means by {mean_diff}")
        path.write_bytes(candidate.read_bytes())
    _update_split_hash(folder)
    write_heatmap_section(folder)
    print(f"{folder.name}: {OUTPUT} {list(maps.shape[1:])} per image; on {len(x)} {source}: "
          f"max |logits new - old| = {logits_diff:.1e}, max |map mean - logit| = {mean_diff:.1e}; "
          f"{path.stat().st_size} bytes")
    if path.name != "model.onnx":
        print(f"{folder.name}: {path.name} rewritten; model.onnx (the shipped file) is now stale: run "
              f"python -m training.quantize {folder.name}")


def _update_split_hash(folder: Path) -> None:
    """Keep ``test_split.json``'s record of which ONNX file its figures belong to."""
    split_path = folder / "test_split.json"
    if not split_path.exists():
        return
    split = json.loads(split_path.read_text(encoding="utf-8"))
    if "onnx_sha256" in split:
        split["onnx_sha256"] = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
        split_path.write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")


def heatmap_section(grid: tuple[int, int], ensemble: bool) -> dict[str, Any]:
    """The card's description of the map output (the plugin reads ``output``)."""
    return {
        "output": OUTPUT,
        "method": ("class activation map (Zhou et al., CVPR 2016): the final linear layer applied at every "
                   "position of the last convolution's features, before the global average pooling"
                   + ("; the mean of the ensemble members' maps" if ensemble else "")),
        "grid": list(grid),
        "covers": ("the whole network input: the frame padded to a centred black square (resize 'pad') or "
                   "stretched (resize 'stretch'), then resized; each map cell covers input_height/grid_rows x "
                   "input_width/grid_columns input pixels"),
        "values": "logit units after the folded temperature; the spatial mean of a class's map is that class's logit",
    }


def map_grid(path: Path) -> tuple[int, int]:
    """(rows, columns) of the map output of the ONNX file at ``path``."""
    output = next(o for o in onnx.load(str(path)).graph.output if o.name == OUTPUT)
    dims = output.type.tensor_type.shape.dim
    return dims[2].dim_value, dims[3].dim_value


def write_heatmap_section(folder: Path) -> None:
    """Write the card's ``heatmap`` section (after ``output``, keeping a measured faithfulness) and file size."""
    card_path = folder / "model.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    ensemble = int(card.get("training", {}).get("ensemble", 1)) > 1
    section = heatmap_section(map_grid(folder / "model.onnx"), ensemble)
    if "faithfulness" in card.get("heatmap", {}):
        section["faithfulness"] = card["heatmap"]["faithfulness"]
    # placed after the output section it extends
    card = {key: value for key, value in card.items() if key != "heatmap"}
    position = list(card).index("output") + 1
    items = list(card.items())
    card = dict(items[:position] + [("heatmap", section)] + items[position:])
    card["file_size_bytes"] = (folder / "model.onnx").stat().st_size
    card_path.write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="models/<name> folders, or 'all'")
    args = parser.parse_args()
    folders = (sorted(p.parent for p in (D.REPO_ROOT / "models").glob("*/model.onnx"))
               if args.folders == ["all"] else [Path(f) for f in args.folders])
    for folder in folders:
        rewrite(folder)


if __name__ == "__main__":
    main()
