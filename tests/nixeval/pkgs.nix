# A stand-in for the nixpkgs package set, as far as the fleet's modules and packages use it.
# Derivations are attribute sets that evaluate and build nothing. What matters is kept as nixpkgs
# keeps it:
# - torch: CUDA only under config.cudaSupport (passthru cudaSupport, as nixpkgs' torch has);
# - python3.override replaces packageOverrides, as Python's override does;
# - comfyui: nixpkgs' package builds its Python from `python3.override` (pkgs/by-name/co/comfyui);
# - ollama-vulkan, ollama-cuda, ollama-cpu exist; services.ollama has no acceleration option.
# `stubAccelerator` marks what a torch really runs on; the checks read it.
# comfyuiShape: pkgs.comfyui's signature, "python3" or "python3Packages" (both were seen in nixpkgs),
# or "absent" (nixpkgs before 2026-07 has no comfyui).
{ lib, config ? { }, overlays ? [ ], system ? "x86_64-linux", comfyuiShape ? "python3" }:
let
  hash = name: builtins.substring 0 32 (builtins.hashString "sha256" name);
  stubDerivation = name: extra:
    let
      self = {
        type = "derivation";
        inherit name system;
        outPath = "/nix/store/${hash name}-${name}";
        drvPath = "/nix/store/${hash "drv-${name}"}-${name}.drv";
        outputs = [ "out" ];
        meta = { mainProgram = lib.head (lib.splitString "-" name); };
      } // extra;
    in self;

  cudaSupport = config.cudaSupport or false;

  comfyuiOf = python: stubDerivation "comfyui-0.34.1" {
    passthru = { inherit python; };
    inherit python;
    torch = python.pkgs.torch;
    meta.mainProgram = "comfyui";
  };
  # pkgs/by-name/co/comfyui/package.nix: its Python is python3.override { packageOverrides = torch
  # with cudaPackages_13 }, so its torch is nixpkgs' (CUDA under cudaSupport, else CPU).
  comfyuiShapes = {
    python3 = { python3 }: comfyuiOf (python3.override { self = python3; packageOverrides = _: _: { }; });
    python3Packages = { python3Packages }: comfyuiOf python3Packages.python;
  };

  # The fixpoint of this set with the host's overlays, as `import nixpkgs { overlays; }` makes it.
  base = final: {
    inherit lib config system stubDerivation;
    stubPython = mkPythonFinal final;
    stdenv.hostPlatform.system = system;
    callPackage = lib.callPackageWith final;
    python3 = mkPythonFinal final { name = "python3.13"; torchAccelerator = if cudaSupport then "cuda" else "cpu"; };
    python313 = final.python3;
    python3Packages = final.python3.pkgs;
    linkFarm = name: entries: stubDerivation name { inherit entries; };
    fetchurl = args: stubDerivation (args.name or (baseNameOf args.url)) { inherit (args) url; outputHash = args.hash or args.sha256; };
    mkShell = args: stubDerivation "nix-shell" args;
    # pkgs/by-name/ol/ollama: one package, its backend an argument; the named variants override it.
    # null: CUDA under cudaSupport, else CPU; false: CPU. (The pre-2026 services.ollama overrides
    # whatever package it is given with its own `acceleration`, null by default.)
    ollama = final.callPackage ({ acceleration ? null }:
      let backend = if acceleration == null then (if cudaSupport then "cuda" else "cpu")
                    else if acceleration == false then "cpu" else acceleration;
      in stubDerivation (if acceleration == null then "ollama-0.32.0" else "ollama-${backend}-0.32.0") {
        meta.mainProgram = "ollama"; stubAccelerator = backend;
      }) { };
    ollama-cpu = final.ollama.override { acceleration = false; };
    ollama-vulkan = final.ollama.override { acceleration = "vulkan"; };
    ollama-cuda = final.ollama.override { acceleration = "cuda"; };
    ollama-rocm = final.ollama.override { acceleration = "rocm"; };
    stdenvNoCC.mkDerivation = args: stubDerivation "${args.pname}-${args.version}" args;
    fetchFromGitHub = args: stubDerivation "source" (args // { outputHash = args.hash; });
  } // lib.genAttrs [ "intel-compute-runtime" "intel-media-driver" "vpl-gpu-rt" "clinfo" "level-zero" "nix"
    "openssh" "nftables" "parallel" "gawk" "gnused" "util-linux" ] (n: stubDerivation n { })
  # The other shape takes python3Packages and builds from that set as given.
  // lib.optionalAttrs (comfyuiShape != "absent") { comfyui = final.callPackage comfyuiShapes.${comfyuiShape} { }; };

  # A Python whose package set is `pythonPackages` plus what its packageOverrides add.
  mkPythonFinal = final: { name, torchAccelerator, extraPackages ? _: _: { } }:
    let
      python = stubDerivation name {
        torchAcceleratorValue = torchAccelerator;
        extraPackagesOf = self: super: extraPackages self super;
        pkgs = pythonPackagesWith final python;
        withPackages = f: stubDerivation "${name}-env" { packages = f python.pkgs; pythonModule = python; };
        sitePackages = "lib/${name}/site-packages";
        # Python's override: new arguments replace the old ones, packageOverrides included.
        override = args: mkPythonFinal final {
          inherit name;
          torchAccelerator = if cudaSupport then "cuda" else "cpu";
          extraPackages = args.packageOverrides or (_: _: { });
        };
      };
    in python;

  pythonPackagesWith = final: python:
    let
      plain = {
        inherit python;
        callPackage = lib.callPackageWith (final // set);
        buildPythonPackage = args: stubDerivation "python-${args.pname}-${args.version}" (args // { pythonModule = python; });
        buildPythonApplication = args: stubDerivation "${args.pname}-${args.version}" (args // { pythonModule = python; });
        torch = stubDerivation "python-torch-2.9" {
          pname = "torch";
          cudaSupport = python.torchAcceleratorValue == "cuda";
          stubAccelerator = python.torchAcceleratorValue;
        };
      } // lib.genAttrs [ "setuptools" "pyinfra" "paramiko" "gevent" "jinja2" "pyyaml" "pydantic" "click" "prometheus-client" "rich" "pytest" "aiohttp" "numpy" "pillow" "safetensors" ]
        (n: stubDerivation "python-${n}" { pname = n; });
      set = plain // python.extraPackagesOf set plain;
    in set;
  withOverlays = overlays: lib.fix (lib.extends (lib.composeManyExtensions overlays)
    (final: base final // { extend = overlay: withOverlays (overlays ++ [ overlay ]); }));
in
withOverlays overlays
