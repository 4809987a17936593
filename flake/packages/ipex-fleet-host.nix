# What fleet hosts run of ipex-fleet: the probe, the benchmark, the model installer, the deployment
# metrics and the host agent (`ipex-fleet probe|bench|models|metrics`, `ipex-benchmark`), built with the
# host's torch and nothing of the controller: no pyinfra, paramiko, click, rich, jinja2, pydantic or
# pyyaml in the host's closure. The source is the same as packages/ipex-fleet.nix (the controller's);
# the split is declared in the code's layout (ipex_fleet/host/ and ipex_fleet/common/) and in pyproject
# (its dependencies are the host side's; the controller's are its `controller` extra):
# tests/test_host_side.py imports every host-side module in a virtual environment holding only those.
{ lib, python3Packages, src, mainProgram ? "ipex-fleet" }:

python3Packages.buildPythonApplication {
  pname = "ipex-fleet-host";
  version = "0.1.0";
  pyproject = true;
  src = lib.cleanSourceWith {
    inherit src;
    filter = path: _type:
      let rel = lib.removePrefix (toString src + "/") (toString path);
      in rel == "pyproject.toml" || rel == "README.md" || lib.hasPrefix "src" rel;
  };
  build-system = [ python3Packages.setuptools ];
  dependencies = with python3Packages; [ prometheus-client torch ];
  # pyproject.toml's dependencies are the host side's (its controller's are the `controller` extra),
  # so nixpkgs' runtime-deps check passes with exactly these.
  doCheck = false;
  pythonImportsCheck = [ "ipex_fleet.host.probe" "ipex_fleet.host.bench" "ipex_fleet.host.models.install" "ipex_fleet.host.metrics"
    "ipex_fleet.host.agent" ];
  meta = {
    description = "ipex-fleet's host side: probe, benchmark, model installer and metrics for Intel GPU AI hosts";
    inherit mainProgram;
    license = lib.licenses.mit;
  };
}
