# Evaluates one target of a flake directory through the real nixpkgs `lib.evalModules`, with the
# option skeleton and package stand-ins of this directory as the locked inputs, and returns the
# facts the checks judge (tests/nixeval/run.py). A target is `host:NAME` (a nixosConfiguration),
# `module:NAME` (one of nixosModules, alone), or `package` (packages.<system>.ipex-fleet).
#   libPath:   nixpkgs' lib/ directory (nix-community/nixpkgs.lib), given by the caller
#   hardware:  add a stand-in hardware configuration (root filesystem, ESP, systemd-boot)
#   variant:   an extra module by name (see `variants`)
{ libPath, flakeDir, target, hardware ? true, variant ? null }:
let
  # A string, so that the flake is read where it lies (a path argument would be copied first).
  flakePath = /. + flakeDir;
  lib = import libPath;
  stubPkgs = args: import ./pkgs.nix ({ inherit lib; } // args);
  skeleton = import ./skeleton.nix { inherit lib stubPkgs; };

  hardwareModule = {
    boot.loader.systemd-boot.enable = true;
    fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
    fileSystems."/boot" = { device = "/dev/disk/by-label/ESP"; fsType = "vfat"; };
  };
  variants = {
    legacy-ipex = { services.ipex.legacyIpex = true; };
    comfyui-o0 = { services.ipex-comfyui.optimisation.level = lib.mkForce "O0"; };
  };
  extraModules = lib.optional hardware hardwareModule ++ lib.optional (variant != null) variants.${variant};

  # nixpkgs' flake exports lib.nixosSystem; this one evaluates the skeleton instead of nixos/.
  nixosSystem = { system ? "x86_64-linux", modules, specialArgs ? { }, ... }:
    let
      evaluated = lib.evalModules {
        specialArgs = { modulesPath = "/nixos/modules"; } // specialArgs;
        modules = skeleton ++ modules ++ extraModules ++ [{ nixpkgs.system = system; }];
      };
    in evaluated // { inherit (evaluated.config._module.args) pkgs; };

  inputs = {
    nixpkgs = { outPath = ./nixpkgs; lib = lib // { inherit nixosSystem; }; };
    intel-xpu = import ./intel-xpu.nix { inherit stubPkgs; };
  };
  flake = import (flakePath + "/flake.nix");
  self = flake.outputs (inputs // { inherit self; }) // { outPath = flakePath; };

  # What a single module needs switched on to do anything.
  enabling = {
    ipex = { services.ipex.enable = true; };
    ollama = { services.ipex-ollama.enable = true; };
    comfyui = { services.ipex-comfyui.enable = true; };
    models = { services.ipex-ollama.enable = true; services.ipex-fleet.models.ollama = [ "llama3.2:1b" ]; };
    fleet = { services.ipex-fleet.enable = true; };
    default = { services.ipex-fleet.enable = true; services.ipex-ollama.enable = true; services.ipex-comfyui.enable = true; };
  };
  single = name: nixosSystem {
    modules = [
      self.nixosModules.${name}
      (enabling.${name} or { })
      { networking.hostName = "single-${name}"; system.stateVersion = "25.11"; }
    ];
  };

  torchOf = pkg:
    let deps = (pkg.dependencies or [ ]) ++ (pkg.propagatedBuildInputs or [ ]);
        found = lib.filter (d: (d.pname or "") == "torch") deps;
    in if found == [ ] then null else (lib.head found).stubAccelerator or "unknown";
  sourceOf = pkg: toString (pkg.src.origSrc or pkg.src);

  packageFacts = pkg: { torch = torchOf pkg; source = sourceOf pkg; };

  facts = config:
    let
      opt = path: lib.attrByPath path null config;
      ollama = config.services.ollama;
      comfyuiEnabled = opt [ "services" "ipex-comfyui" "enable" ] == true;
      fleetEnabled = opt [ "services" "ipex-fleet" "enable" ] == true;
      service = name: config.systemd.services.${name} or null;
    in
    {
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      warnings = config.warnings;
      users = lib.attrNames config.users.users;
      systemPackages = map (p: p.name) config.environment.systemPackages;
      ollama = if !ollama.enable then null else {
        package = ollama.package.name;
        accelerator = ollama.package.stubAccelerator or "unknown";
        loadModels = ollama.loadModels;
        smokeModel = opt [ "services" "ipex-ollama" "smokeModel" ];
        modelsDir = (service "ollama").environment.OLLAMA_MODELS;
        fleetAccelerator = opt [ "services" "ipex-fleet" "services" "ollama" "accelerator" ];
      };
      comfyui = if !comfyuiEnabled then null else {
        execStart = (service "comfyui").serviceConfig.ExecStart;
        torch = config.services.ipex-comfyui.package.torch.stubAccelerator or "unknown";
        accelerator = config.services.ipex-fleet.services.comfyui.accelerator;
      };
      fleet = if !fleetEnabled then null else {
        accelerator = config.services.ipex-fleet.accelerator;
        package = packageFacts config.services.ipex-fleet.package;
        metricsDirectory = config.services.ipex-fleet.metrics.directory;
        metricsExecStart = ((service "ipex-fleet-metrics").serviceConfig.ExecStart or null);
        nodeExporter = { inherit (config.services.prometheus.exporters.node) enable extraFlags; };
      };
    };
  kind = lib.head (lib.splitString ":" target);
  name = lib.removePrefix "${kind}:" target;
in
{
  inherit target flakeDir;
  flakeOutputs = lib.attrNames (removeAttrs self [ "outPath" ]);
  facts =
    if kind == "host" then facts self.nixosConfigurations.${name}.config
    else if kind == "module" then facts (single name).config
    else if kind == "package" then packageFacts self.packages.x86_64-linux.ipex-fleet
    else throw "unknown target ${target}: use host:NAME, module:NAME or package";
}
