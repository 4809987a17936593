"""The core ComfyUI node types the example workflows use, and prompt validation as ComfyUI's
`execution.validate_prompt` does it: an output node is required, each output's inputs are checked
(required present, links to an existing node's output of the right type, values of the right type
and range, choices among the listed ones), and failures come back as `node_errors` keyed by node id.

Model-file choices list the files under the state directory's models/ folders, as ComfyUI lists
its model folders; a workflow naming a file the host lacks fails with `value_not_in_list`.
"""

import os

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_sde", "ddim", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")

INT = lambda lo, hi, default: ("INT", {"default": default, "min": lo, "max": hi})  # noqa: E731
FLOAT = lambda lo, hi, default: ("FLOAT", {"default": default, "min": lo, "max": hi})  # noqa: E731


def _files(state, folder, suffixes=MODEL_SUFFIXES):
    path = os.path.join(state, folder)
    try:
        return sorted(f for f in os.listdir(path) if f.endswith(suffixes))
    except OSError:
        return []


def node_types(state):
    """{class_type: {"input": {"required": {...}, "optional": {...}}, "output": [...], "output_node": bool}}"""
    models = os.path.join(state, "models")
    return {
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": (_files(models, "checkpoints"),)}},
                                   "output": ["MODEL", "CLIP", "VAE"]},
        "CLIPTextEncode": {"input": {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}},
                           "output": ["CONDITIONING"]},
        "EmptyLatentImage": {"input": {"required": {"width": INT(16, 16384, 512), "height": INT(16, 16384, 512),
                                                    "batch_size": INT(1, 4096, 1)}},
                             "output": ["LATENT"]},
        "KSampler": {"input": {"required": {
            "model": ("MODEL",), "seed": INT(0, 2 ** 64 - 1, 0), "steps": INT(1, 10000, 20),
            "cfg": FLOAT(0.0, 100.0, 8.0), "sampler_name": (SAMPLERS,), "scheduler": (SCHEDULERS,),
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
            "denoise": FLOAT(0.0, 1.0, 1.0)}},
            "output": ["LATENT"]},
        "VAEDecode": {"input": {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}, "output": ["IMAGE"]},
        "SaveImage": {"input": {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
                      "output": [], "output_node": True},
        "LoadImage": {"input": {"required": {"image": (_files(state, "input", (".png", ".jpg", ".jpeg", ".webp")),)}},
                      "output": ["IMAGE", "MASK"]},
        "Canny": {"input": {"required": {"image": ("IMAGE",), "low_threshold": FLOAT(0.01, 0.99, 0.4),
                                         "high_threshold": FLOAT(0.01, 0.99, 0.8)}},
                  "output": ["IMAGE"]},
        "ControlNetLoader": {"input": {"required": {"control_net_name": (_files(models, "controlnet"),)}},
                             "output": ["CONTROL_NET"]},
        "ControlNetApplyAdvanced": {"input": {
            "required": {"positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "control_net": ("CONTROL_NET",),
                         "image": ("IMAGE",), "strength": FLOAT(0.0, 10.0, 1.0),
                         "start_percent": FLOAT(0.0, 1.0, 0.0), "end_percent": FLOAT(0.0, 1.0, 1.0)},
            "optional": {"vae": ("VAE",)}},
            "output": ["CONDITIONING", "CONDITIONING"]},
    }


def object_info(state):
    """GET /object_info, in ComfyUI's shape."""
    out = {}
    for name, spec in node_types(state).items():
        inputs = {section: {k: list(v) for k, v in fields.items()} for section, fields in spec["input"].items()}
        out[name] = {"input": inputs, "input_order": {s: list(f) for s, f in spec["input"].items()},
                     "output": spec["output"], "output_is_list": [False] * len(spec["output"]),
                     "output_name": spec["output"], "name": name, "display_name": name,
                     "description": "", "category": "lab", "output_node": spec.get("output_node", False)}
    return out


def _error(kind, message, details, **extra):
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _check_value(name, spec, value):
    kind = spec[0]
    if isinstance(kind, list):
        if value not in kind:
            return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {kind}",
                          input_name=name, input_config=list(spec), received_value=value)
        return None
    options = spec[1] if len(spec) > 1 else {}
    if kind == "INT" and not (isinstance(value, int) and not isinstance(value, bool)):
        return _error("invalid_input_type", f"Failed to convert an input value to a INT value",
                      f"{name}, {value}", input_name=name, received_value=value)
    if kind == "FLOAT" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return _error("invalid_input_type", f"Failed to convert an input value to a FLOAT value",
                      f"{name}, {value}", input_name=name, received_value=value)
    if kind == "STRING" and not isinstance(value, str):
        return _error("invalid_input_type", "Failed to convert an input value to a STRING value",
                      f"{name}, {value}", input_name=name, received_value=value)
    if kind in ("INT", "FLOAT"):
        if "min" in options and value < options["min"]:
            return _error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                          f"{name}", input_name=name, received_value=value)
        if "max" in options and value > options["max"]:
            return _error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                          f"{name}", input_name=name, received_value=value)
    elif kind not in ("STRING", "BOOLEAN"):
        return _error("return_type_mismatch", "Return type mismatch between linked nodes",
                      f"{name}, received a constant for a {kind} input", input_name=name)
    return None


def _validate_node(prompt, types, node_id, seen, errors):
    """Errors of this node and the nodes it links to (each node once)."""
    if node_id in seen:
        return
    seen.add(node_id)
    node = prompt[node_id]
    spec = types[node["class_type"]]
    inputs = node.get("inputs") or {}
    mine = []
    fields = {**spec["input"].get("optional", {}), **spec["input"]["required"]}
    for name, field in fields.items():
        if name not in inputs:
            if name in spec["input"]["required"]:
                mine.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value = inputs[name]
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
            source = str(value[0])
            if source not in prompt or prompt[source].get("class_type") not in types:
                mine.append(_error("bad_linked_input", "Bad linked input, linked node is missing",
                                   f"{name}, {value}", input_name=name, received_value=value))
                continue
            outputs = types[prompt[source]["class_type"]]["output"]
            if not 0 <= value[1] < len(outputs) or outputs[value[1]] != field[0]:
                got = outputs[value[1]] if 0 <= value[1] < len(outputs) else None
                mine.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                   f"{name}, received_type({got}) mismatch input_type({field[0]})",
                                   input_name=name, received_type=got, linked_node=value))
                continue
            _validate_node(prompt, types, source, seen, errors)
        else:
            problem = _check_value(name, field, value)
            if problem:
                mine.append(problem)
    if mine:
        errors[node_id] = {"errors": mine, "dependent_outputs": [], "class_type": node["class_type"]}


def validate(prompt, state):
    """(None, {}) when the prompt is valid, else (error, node_errors), as ComfyUI answers them."""
    types = node_types(state)
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return _error("invalid_prompt", f"Cannot execute because a node is missing the class_type property.",
                          f"Node ID '#{node_id}'"), {}
        if node["class_type"] not in types:
            return _error("invalid_prompt",
                          f"Cannot execute because node {node['class_type']} does not exist.",
                          f"Node ID '#{node_id}'"), {}
    outputs = [k for k, v in prompt.items() if types[v["class_type"]].get("output_node")]
    if not outputs:
        return _error("prompt_no_outputs", "Prompt has no outputs", ""), {}
    node_errors = {}
    for output in outputs:
        errors = {}
        _validate_node(prompt, types, output, set(), errors)
        for node_id, entry in errors.items():
            merged = node_errors.setdefault(node_id, entry)
            merged["dependent_outputs"] = sorted(set(merged["dependent_outputs"]) | {output})
    if node_errors:
        return _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", ""), node_errors
    return None, {}
