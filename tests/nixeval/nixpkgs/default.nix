# `import nixpkgs { ... }` for the flake-level package set: the stand-in, with the lib the harness
# was given (IPEX_FLEET_NIXPKGS_LIB, set by tests/nixeval/run.py).
args: import ../pkgs.nix ({ lib = import (builtins.getEnv "IPEX_FLEET_NIXPKGS_LIB"); } // args)
