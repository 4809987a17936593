# The ipex-fleet Python package (probe and bench run on hosts), built with the host's torch.
# `mainProgram = "ipex-benchmark"` gives the same package as the benchmark by name (nix run .#ipex-benchmark).
{ lib, python3Packages, src, mainProgram ? "ipex-fleet" }:

python3Packages.buildPythonApplication {
  pname = "ipex-fleet";
  version = "0.1.0";
  pyproject = true;
  src = lib.cleanSourceWith {
    inherit src;
    filter = path: _type:
      let rel = lib.removePrefix (toString src + "/") (toString path);
      in rel == "pyproject.toml" || rel == "README.md" || lib.hasPrefix "src" rel;
  };
  build-system = [ python3Packages.setuptools ];
  dependencies = with python3Packages; [ pyinfra paramiko gevent jinja2 pyyaml pydantic click prometheus-client rich torch ];
  # The lab and deploy tests need root, namespaces and sshd: they run in the repository's CI.
  doCheck = false;
  pythonImportsCheck = [ "ipex_fleet.host.probe" "ipex_fleet.host.bench" ];
  meta = {
    description = "Deploy, health-check and benchmark tooling for Intel GPU AI hosts";
    inherit mainProgram;
    license = lib.licenses.mit;
  };
}
