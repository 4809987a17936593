{
  # The lab's package source: it stands in for nixpkgs as the lab flake's locked input. The lab
  # serves it as a tarball from its own HTTP server on loopback; the controller locks and holds it;
  # hosts never fetch it: the deploy carries it into their stores.
  # It provides what nixpkgs provides a NixOS system here: the toplevel builder, the activation
  # script (switch-to-configuration) and the services' stand-ins.
  description = "ipex-fleet lab packages (stands in for nixpkgs)";

  outputs = { self }: {
    lib = {
      version = "1";
      # The channel's release (`ipex-fleet lab release`), in every toplevel: a new release is a change.
      release = if builtins.pathExists ./RELEASE then builtins.readFile ./RELEASE else "0\n";
      toplevelBuilder = ./build.sh;
      switchToConfiguration = ./activate.py;
      services = ./services;
      # The ipex-fleet package from a source tree (the pushed flake's _source), run with the given
      # Python (the lab hosts see the controller's environment read-only, with torch). The controller's
      # dependencies are in that environment but not in the NixOS host package
      # (flake/packages/ipex-fleet-host.nix): a sitecustomize beside the package makes them unimportable
      # here too, so a host command costs what it costs on a fleet host (`ipex-fleet metrics` at every
      # record: 0.1 CPU-s, not 0.3 with pyinfra imported), and one that needed them would fail here as
      # it would there. The command line stays `python -m ipex_fleet ...`.
      ipexFleet = { src, python, system }: derivation {
        name = "ipex-fleet-lab";
        inherit system python;
        source = src + "/src";
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" ''
          set -eu
          mkdir -p $out/lib/python $out/bin
          cp -r $source/ipex_fleet $out/lib/python/
          cat > $out/lib/python/sitecustomize.py <<'EOF'
          import importlib.abc, sys
          BLOCKED = ("pyinfra", "pyinfra_cli", "paramiko", "click", "rich", "jinja2", "pydantic", "gevent", "yaml")
          class Blocked(importlib.abc.MetaPathFinder):
              def find_spec(self, name, path=None, target=None):
                  if name.split(".")[0] in BLOCKED:
                      raise ImportError("not in the host package: " + name)
          sys.meta_path.insert(0, Blocked())
          EOF
          printf '#!/bin/sh\nPYTHONPATH=%s/lib/python exec '"'"'%s'"'"' -m ipex_fleet "$@"\n' "$out" "$python" > $out/bin/ipex-fleet
          chmod 0555 $out/bin/ipex-fleet
        '' ];
      };
    };
  };
}
