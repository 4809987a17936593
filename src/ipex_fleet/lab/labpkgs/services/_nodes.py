"""The core ComfyUI node types the example workflows and the health probe use, and prompt validation
as ComfyUI's `execution.validate_prompt` / `validate_inputs` do it (REFERENCE.md, tried against
ComfyUI 0.3.64):

- every node needs a known class_type; at least one output node;
- each output is validated on its own: a prompt with one valid and one invalid output is accepted
  (the caller answers 200 with `node_errors`) and only the valid output runs;
- values are converted as ComfyUI converts them (int("20"), int(20.7), int(True); str(anything);
  float(...)), then checked against min/max and combo lists;
- a constant given where a link is expected passes validation (it fails when the node runs);
- a link to a missing node or slot raises inside validation: the node that holds the link gets
  `exception_during_inner_validation` (or, for an output node, `exception_during_validation`);
- LoadImage validates its file itself: a missing image is `custom_validation_failed`.

Model-file choices list the files under the state directory's models/ folders, as ComfyUI lists
its model folders; a workflow naming a file the host lacks fails with `value_not_in_list`.
"""

import os

# comfy/samplers.py: KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"] (42), SCHEDULER_NAMES (9).
SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VALUE_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")

INT = lambda lo, hi, default: ("INT", {"default": default, "min": lo, "max": hi})  # noqa: E731
FLOAT = lambda lo, hi, default: ("FLOAT", {"default": default, "min": lo, "max": hi})  # noqa: E731


def _files(state, folder, suffixes=MODEL_SUFFIXES):
    path = os.path.join(state, folder)
    try:
        return sorted(f for f in os.listdir(path) if f.endswith(suffixes))
    except OSError:
        return []


def _image_exists(state):
    """LoadImage.VALIDATE_INPUTS: the file must be in input/ (True), else the reason."""
    def check(image):
        return True if os.path.isfile(os.path.join(state, "input", str(image))) else f"Invalid image file: {image}"
    return check


def node_types(state):
    """{class_type: {"input": {"required": {...}, "optional": {...}}, "output": [...], "output_node": bool,
    "validate": {input: check}}}; a check returns True or the reason, as VALIDATE_INPUTS does."""
    models = os.path.join(state, "models")
    return {
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": (_files(models, "checkpoints"),)}},
                                   "output": ["MODEL", "CLIP", "VAE"]},
        "CLIPTextEncode": {"input": {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}},
                           "output": ["CONDITIONING"]},
        "EmptyLatentImage": {"input": {"required": {"width": INT(16, 16384, 512), "height": INT(16, 16384, 512),
                                                    "batch_size": INT(1, 4096, 1)}},
                             "output": ["LATENT"]},
        "EmptyImage": {"input": {"required": {"width": INT(1, 16384, 512), "height": INT(1, 16384, 512),
                                              "batch_size": INT(1, 4096, 1), "color": INT(0, 0xFFFFFF, 0)}},
                       "output": ["IMAGE"]},
        "KSampler": {"input": {"required": {
            "model": ("MODEL",), "seed": INT(0, 2 ** 64 - 1, 0), "steps": INT(1, 10000, 20),
            "cfg": FLOAT(0.0, 100.0, 8.0), "sampler_name": (SAMPLERS,), "scheduler": (SCHEDULERS,),
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
            "denoise": FLOAT(0.0, 1.0, 1.0)}},
            "output": ["LATENT"]},
        "VAEDecode": {"input": {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}, "output": ["IMAGE"]},
        "SaveImage": {"input": {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
                      "output": [], "output_node": True},
        "PreviewImage": {"input": {"required": {"images": ("IMAGE",)}}, "output": [], "output_node": True},
        "LoadImage": {"input": {"required": {"image": (_files(state, "input", IMAGE_SUFFIXES), {"image_upload": True})}},
                      "output": ["IMAGE", "MASK"], "validate": {"image": _image_exists(state)}},
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


def _info(name, spec):
    inputs = {section: {k: list(v) for k, v in fields.items()} for section, fields in spec["input"].items()}
    return {"input": inputs, "input_order": {s: list(f) for s, f in spec["input"].items()},
            "output": spec["output"], "output_is_list": [False] * len(spec["output"]),
            "output_name": spec["output"], "name": name, "display_name": name,
            "description": "", "python_module": "nodes", "category": "lab",
            "output_node": spec.get("output_node", False)}


def object_info(state, only=None):
    """GET /object_info, or /object_info/{class} (`only`: {} when ComfyUI has no such class)."""
    types = node_types(state)
    names = [only] if only is not None else list(types)
    return {name: _info(name, types[name]) for name in names if name in types}


def _error(kind, message, details, **extra):
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _fits(received, wanted):
    """validate_node_input: equal, or "*" on either side, or comma-separated unions that meet."""
    if received == wanted:
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    got, want = {t.strip() for t in received.split(",")}, {t.strip() for t in wanted.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def _convert(kind, value):
    if kind == "INT":
        return int(value)
    if kind == "FLOAT":
        return float(value)
    if kind == "STRING":
        return str(value)
    if kind == "BOOLEAN":
        return bool(value)
    return value  # a link type given a constant: accepted here, it fails when the node runs


def validate_inputs(prompt, node_id, validated, types):
    """(valid, errors, node_id) for one node and, recursively, what it links to (each node once).
    A link to a missing node or slot raises, as ComfyUI's does: the caller turns it into an error."""
    if node_id in validated:
        return validated[node_id]
    node = prompt[node_id]
    inputs = node.get("inputs") or {}
    spec = types[node["class_type"]]
    required = spec["input"].get("required", {})
    fields = {**required, **spec["input"].get("optional", {})}
    custom = spec.get("validate", {})
    errors, valid = [], True
    for name, field in fields.items():
        kind, options = field[0], (field[1] if len(field) > 1 else {})
        info = [kind, options]
        if name not in inputs:
            if name in required:
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value = inputs[name]
        if isinstance(value, list):
            if len(value) != 2:
                errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                     name, input_name=name, input_config=info, received_value=value))
                continue
            source = value[0]
            received = types[prompt[source]["class_type"]]["output"][value[1]]  # KeyError/IndexError: see above
            if not _fits(received, kind):
                errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                     f"{name}, received_type({received}) mismatch input_type({kind})",
                                     input_name=name, input_config=info, received_type=received, linked_node=value))
                continue
            try:
                if validate_inputs(prompt, source, validated, types)[0] is False:
                    valid = False  # its own errors are recorded under its id
            except Exception as ex:  # a link inside it points nowhere
                valid = False
                validated[source] = (False, [_error(
                    "exception_during_inner_validation", "Exception when validating inner node", str(ex),
                    input_name=name, input_config=info, exception_message=str(ex),
                    exception_type=type(ex).__name__, traceback=[], linked_node=value)], source)
            continue
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        try:
            value = _convert(kind, value)
        except Exception as ex:
            errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                                 f"{name}, {value}, {ex}", input_name=name, input_config=info,
                                 received_value=value, exception_message=str(ex)))
            continue
        inputs[name] = value
        if name in custom:
            continue
        if kind in ("INT", "FLOAT"):
            if "min" in options and value < options["min"]:
                errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                     name, input_name=name, input_config=info, received_value=value))
                continue
            if "max" in options and value > options["max"]:
                errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                     name, input_name=name, input_config=info, received_value=value))
                continue
        if isinstance(kind, list) and value not in kind:
            shown = f"(list of length {len(kind)})" if len(kind) > 20 else str(kind)
            errors.append(_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {shown}",
                                 input_name=name, input_config=info if len(kind) <= 20 else None,
                                 received_value=value))
    for name, check in custom.items():
        if name in inputs and not isinstance(inputs[name], list):
            verdict = check(inputs[name])
            if verdict is not True:
                details = name if verdict is False else f"{name} - {verdict}"
                errors.append(_error("custom_validation_failed", "Custom validation failed for node", details,
                                     input_name=name))
    result = (not errors and valid, errors, node_id)
    validated[node_id] = result
    return result


def validate(prompt, state, types=None):
    """(error, good_outputs, node_errors), as ComfyUI's validate_prompt: error is None when at least one
    output is valid (the caller answers 200 with node_errors for the others)."""
    types = types or node_types(state)
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                          f"Node ID '#{node_id}'"), [], {}
        if node["class_type"] not in types:
            return _error("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                          f"Node ID '#{node_id}'"), [], {}
    outputs = [k for k, v in prompt.items() if types[v["class_type"]].get("output_node")]
    if not outputs:
        return _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
    good, failures, node_errors, validated = [], [], {}, {}
    for output in outputs:
        try:
            valid, reasons, _ = validate_inputs(prompt, output, validated, types)
        except Exception as ex:  # a link of the output node itself points nowhere
            valid, reasons = False, [_error("exception_during_validation", "Exception when validating node", str(ex),
                                            exception_type=type(ex).__name__, traceback=[])]
            validated[output] = (False, reasons, output)
        if valid:
            good.append(output)
            continue
        failures.append((output, reasons))
        for node_id, (ok, why, _) in validated.items():
            if ok is not True and why:  # downstream nodes of a broken one carry no errors of their own
                entry = node_errors.setdefault(node_id, {"errors": why, "dependent_outputs": [],
                                                         "class_type": prompt[node_id]["class_type"]})
                entry["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failures for e in reasons)
        return _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), [], node_errors
    return None, good, node_errors
