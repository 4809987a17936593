# Evaluates one target of a flake directory through the real nixpkgs `lib.evalModules`, with the
# option skeleton and package stand-ins of this directory as the locked inputs, and returns the
# facts the checks judge (tests/nixeval/run.py). A target is `host:NAME` (a nixosConfiguration),
# `module:NAME` (one of nixosModules, alone), or `package` (packages.<system>.ipex-fleet).
#   libPath:   nixpkgs' lib/ directory (nix-community/nixpkgs.lib), given by the caller
#   hardware:  add a stand-in hardware configuration (root filesystem, ESP, systemd-boot) to a
#              single module; hosts carry their own (hosts/<name>/hardware-configuration.nix)
#   variant:   an extra module by name (see `variants`)
#   ollamaShape:  nixpkgs' services.ollama as of "modelsDir" (2026-07 on) or "models" (before)
#   comfyuiShape: pkgs.comfyui taking "python3", "python3Packages", or "absent" (nixpkgs before 2026-07)
{ libPath, flakeDir, target, hardware ? true, variant ? null, pkgsHost ? "arc-a770-01", intelXpu ? "full",
  ollamaShape ? "modelsDir", comfyuiShape ? "python3" }:
let
  # A string, so that the flake is read where it lies (a path argument would be copied first).
  flakePath = /. + flakeDir;
  lib = import libPath;
  stubPkgs = args: import ./pkgs.nix ({ inherit lib comfyuiShape; } // args);
  skeleton = import ./skeleton.nix { inherit lib stubPkgs ollamaShape; };

  hardwareModule = {
    boot.loader.systemd-boot.enable = true;
    fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
    fileSystems."/boot" = { device = "/dev/disk/by-label/ESP"; fsType = "vfat"; };
  };
  # Extra modules by name: each new option with a configuration that passes and one that fails.
  sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  modelFile = sha256: { kind = "checkpoints"; name = "sd15.safetensors"; url = "https://models.example/sd15.safetensors"; inherit sha256; };
  variants = {
    legacy-ipex = { services.ipex.legacyIpex = true; };
    comfyui-o0 = { services.ipex-comfyui.optimisation.level = lib.mkForce "O0"; };
    devices-gpu-cpu = { services.ipex.devices = [ "gpu" "cpu" ]; };
    devices-none = { services.ipex.devices = [ ]; };
    jit-off = { services.ipex-comfyui.optimisation.jitCompile = false; };
    jit-on = { services.ipex-comfyui.optimisation.jitCompile = true; };
    controller-waves = { services.ipex-fleet-controller = { schedule = "daily"; maintainArgs = [ "--waves" "1,50%" "--restart" ]; }; };
    controller-relative = { services.ipex-fleet-controller.repository = lib.mkForce "fleet"; };
    models-path = { services.ipex-comfyui.models.path = "/srv/models/comfyui"; };
    models-path-relative = { services.ipex-comfyui.models.path = "models"; };
    nodes-known = { services.ipex-comfyui.nodes.enable = [ "controlnet-aux" "upscaling" ]; };
    nodes-unknown = { services.ipex-comfyui.nodes.enable = [ "controlnet-aux" "animatediff" ]; };
    autodownload = { services.ipex-fleet.models = { autoDownload = true; files = [ (modelFile sha) ]; }; };
    autodownload-sri = { services.ipex-fleet.models = { autoDownload = true; files = [ (modelFile "sha256-ASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4mrze8=") ]; }; };
    store-models = { services.ipex-fleet.models.files = [ (modelFile sha) ]; };
    metrics-closed = { services.ipex-fleet.metrics.allowFrom = lib.mkForce [ ]; };
    metrics-nftables = { networking.nftables.enable = true; services.ipex-fleet.metrics.allowFrom = [ "fd00:40::/64" ]; };
    metrics-bad = { services.ipex-fleet.metrics.allowFrom = [ "prometheus.example" ]; };
  };
  homeVariants = {
    ipex-xpu = { programs.ipex.enable = true; };
    ipex-dev = { programs.ipex = { enable = true; development.enable = true; }; };
    ipex-cuda-no-support = { programs.ipex = { enable = true; accelerator = "cuda"; }; };
    ipex-cpu = { programs.ipex = { enable = true; accelerator = "cpu"; }; };
    comfyui = { programs.comfyui-ipex = { enable = true; models.symlinks = { checkpoints = "~/ai-models/checkpoints"; controlnet = "/srv/models/controlnet"; }; }; };
    comfyui-bad-kind = { programs.comfyui-ipex = { enable = true; models.symlinks.checkpoint = "~/ai-models/checkpoints"; }; };
    ipex-extra = { programs.ipex = { enable = true; extraPythonPackages = ps: [ ps.numpy ]; deviceSelector = "level_zero:1"; }; };
    ipex-bad-extra = { programs.ipex = { enable = true; extraPythonPackages = "numpy"; }; };
    ipex-bad-selector = { programs.ipex = { enable = true; deviceSelector = 1; }; };
    comfyui-no-workflows = { programs.comfyui-ipex = { enable = true; workflows.enable = false; }; };
    comfyui-bad-workflows = { programs.comfyui-ipex = { enable = true; workflows.enable = "yes"; }; };
    comfyui-outside-home = { programs.comfyui-ipex = { enable = true; workspace.directory = "/srv/comfyui"; }; };
  };
  # Hosts bring their own hardware-configuration.nix (run.py evaluates a copy without them for
  # hardware = false); single modules get the stand-in.
  extraModules = lib.optional (hardware && kind != "host") hardwareModule
    ++ lib.optional (variant != null) variants.${variant};

  # nixpkgs' flake exports lib.nixosSystem; this one evaluates the skeleton instead of nixos/.
  nixosSystem = { system ? "x86_64-linux", modules, specialArgs ? { }, ... }:
    let
      evaluated = lib.evalModules {
        # The modules hardware-configuration.nix imports (installer/scan/not-detected.nix) as nixpkgs has them.
        specialArgs = { modulesPath = ./modules; } // specialArgs;
        modules = skeleton ++ modules ++ extraModules ++ [{ nixpkgs.system = system; }];
      };
    in evaluated // { inherit (evaluated._module.args) pkgs; };

  inputs = {
    nixpkgs = { outPath = ./nixpkgs; lib = lib // { inherit nixosSystem; }; };
    # "bare": an intel-xpu input that provides none of what the overlay asks of it.
    intel-xpu = if intelXpu == "bare" then { } else import ./intel-xpu.nix { inherit stubPkgs; };
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
    controller = { services.ipex-fleet-controller = { enable = true; repository = "/srv/fleet"; }; };
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

  packageFacts = pkg: {
    torch = torchOf pkg; source = sourceOf pkg; pname = pkg.pname or null;
    dependencies = map (d: d.pname or d.name) ((pkg.dependencies or [ ]) ++ (pkg.propagatedBuildInputs or [ ]));
    removedDependencies = pkg.pythonRemoveDeps or [ ];
  };

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
        # What the unit runs: the package's store path, and that package's backend.
        execStart = (service "ollama").serviceConfig.ExecStart;
        execPackage = lib.getExe ollama.package;
        fleetAccelerator = opt [ "services" "ipex-fleet" "services" "ollama" "accelerator" ];
      };
      environment = config.services.ipex.environment or { };
      tmpfiles = config.systemd.tmpfiles.rules;
      etc = lib.attrNames config.environment.etc;
      services = lib.mapAttrs (_: s: { inherit (s) requires after wantedBy before; execStart = s.serviceConfig.ExecStart or null; })
        (lib.filterAttrs (n: _: lib.elem n [ "comfyui" "ipex-fleet-models" ]) config.systemd.services);
      comfyui = if !comfyuiEnabled then null else {
        customNodes = map (e: e.name) (config.services.ipex-comfyui.customNodesDir.entries or [ ]);
        modelsPath = config.services.ipex-fleet.services.comfyui.models;
        execStart = (service "comfyui").serviceConfig.ExecStart or "";
        torch = (config.services.ipex-comfyui.package).torch.stubAccelerator or "unknown";
        accelerator = config.services.ipex-fleet.services.comfyui.accelerator;
      };
      controller = if opt [ "services" "ipex-fleet-controller" "enable" ] != true then null else {
        timer = { inherit (config.systemd.timers.ipex-fleet-maintain) wantedBy timerConfig; };
        serviceConfig = (service "ipex-fleet-maintain").serviceConfig;
        environment = (service "ipex-fleet-maintain").environment;
        user = config.users.users.${config.services.ipex-fleet-controller.user}.isSystemUser;
      };
      fleet = if !fleetEnabled then null else {
        accelerator = config.services.ipex-fleet.accelerator;
        package = packageFacts config.services.ipex-fleet.package;
        metricsDirectory = config.services.ipex-fleet.metrics.directory;
        metricsExecStart = lib.concatStringsSep "\n" (lib.toList ((service "ipex-fleet-metrics").serviceConfig.ExecStart or [ ]));
        nodeExporter = { inherit (config.services.prometheus.exporters.node) enable extraFlags port; };
        firewall = { inherit (config.networking.firewall) allowedTCPPorts extraCommands extraInputRules; };
      };
    };
  home = name: lib.evalModules {
    modules = import ./home-skeleton.nix { inherit lib; pkgs = stubPkgs { }; }
      ++ [
        self.homeManagerModules.${name}
        { home = { username = "dev"; homeDirectory = "/home/dev"; stateVersion = "25.11"; }; }
      ]
      ++ lib.optional (variant != null) homeVariants.${variant};
  };
  homeFacts = config: {
    failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
    warnings = config.warnings;
    packages = map (p: p.name) config.home.packages;
    pythonPackages = lib.concatMap (p: map (q: q.pname or q.name) (p.packages or [ ])) config.home.packages;
    torch = map (p: lib.concatMap (q: lib.optional ((q.pname or "") == "torch") q.stubAccelerator) (p.packages or [ ])) config.home.packages;
    sessionVariables = config.home.sessionVariables;
    files = lib.mapAttrs (_: f: if f.text != null then { text = f.text; } else {
      source = if f.source ? outOfStoreTarget then "outOfStore:${f.source.outOfStoreTarget}" else toString f.source;
    }) config.home.file;
    vscode = if config.programs.vscode.enable then config.programs.vscode.profiles.default.userSettings else null;
  };
  # A flake output by attribute path: a derivation's name and main program, or an app.
  outputFacts = path:
    let v = lib.attrByPath (lib.splitString "." path) (throw "no flake output ${path}") self;
    in if v.type or null == "app" then { inherit (v) type program; }
    else { inherit (v) name; mainProgram = v.meta.mainProgram or null; src = v.src.rev or null;
           outputHash = v.src.outputHash or null; pythonDependencies = v.passthru.pythonDependencies or [ ]; };
  kind = lib.head (lib.splitString ":" target);
  name = lib.removePrefix "${kind}:" target;
in
{
  inherit target flakeDir;
  flakeOutputs = lib.attrNames (removeAttrs self [ "outPath" ]);
  facts =
    if kind == "host" then facts self.nixosConfigurations.${name}.config
    else if kind == "module" then facts (single name).config
    else if kind == "package" then packageFacts self.packages.x86_64-linux.${if name == "package" then "ipex-fleet" else name}
    else if kind == "home" then homeFacts (home name).config
    else if kind == "output" then outputFacts name
    else if kind == "pkgs" then
      let v = lib.attrByPath (lib.splitString "." name) null (self.nixosConfigurations.${pkgsHost}.pkgs);
      in { name = v.name or null; torch = v.torch.stubAccelerator or (v.pkgs.torch.stubAccelerator or null); }
    else throw "unknown target ${target}: use host:NAME, module:NAME or package";
}
