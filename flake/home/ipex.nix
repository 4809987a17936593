# programs.ipex: a developer's environment on the host's accelerator (home-manager).
# Python with the torch of that accelerator (intel-python's XPU torch, nixpkgs' torch with CUDA
# under cudaSupport, or CPU torch), the probe, bench and ipex-benchmark on PATH, and the Intel
# variables where the GPU is Intel. Editor settings only when development.enable is set.
{ config, lib, pkgs, ipexFleet, ... }:

let
  cfg = config.programs.ipex;
  inherit (lib) mkEnableOption mkIf mkOption types;
  ipexPkgs = pkgs.extend ipexFleet.overlay;
  python = if cfg.accelerator == "xpu" then ipexPkgs.intel-xpu.python else pkgs.python3;
  pythonEnv = python.withPackages (ps: [ ps.torch ] ++ cfg.extraPythonPackages ps);
  tools = ipexPkgs.callPackage ../packages/ipex-fleet.nix {
    src = ipexFleet.source;
    python3Packages = python.pkgs;
  };
in
{
  options.programs.ipex = {
    enable = mkEnableOption "the IPEX / XPU development environment: Python with torch, the probe and the benchmark";

    accelerator = mkOption {
      type = types.enum [ "xpu" "cuda" "cpu" ];
      default = "xpu";
      description = ''
        The accelerator the environment's torch runs on: xpu (intel-python's torch from the
        intel-xpu input), cuda (nixpkgs' torch; needs nixpkgs.config.cudaSupport) or cpu.
      '';
    };

    deviceSelector = mkOption {
      type = types.str;
      default = "level_zero:gpu";
      example = "level_zero:0";
      description = "ONEAPI_DEVICE_SELECTOR for XPU work (xpu only).";
    };

    extraPythonPackages = mkOption {
      type = types.functionTo (types.listOf types.package);
      default = _: [ ];
      defaultText = lib.literalExpression "ps: [ ]";
      example = lib.literalExpression "ps: [ ps.numpy ps.jupyterlab ]";
      description = "More packages for the environment's Python, from its own package set.";
    };

    python = mkOption {
      type = types.package;
      readOnly = true;
      default = pythonEnv;
      defaultText = lib.literalExpression "the Python environment with torch";
      description = "The environment's Python (with torch), for other modules to use.";
    };

    development.enable = mkEnableOption "editor settings (VS Code: the environment's Python as interpreter)";
  };

  config = mkIf cfg.enable {
    assertions = [{
      assertion = cfg.accelerator != "cuda" || (pkgs.config.cudaSupport or false);
      message = "programs.ipex.accelerator = cuda needs nixpkgs.config.cudaSupport = true: nixpkgs' torch "
        + "has no CUDA otherwise";
    }];

    home.packages = [ pythonEnv tools ];

    home.sessionVariables = lib.optionalAttrs (cfg.accelerator == "xpu") {
      ONEAPI_DEVICE_SELECTOR = cfg.deviceSelector;
      SYCL_CACHE_PERSISTENT = "1";
      ZES_ENABLE_SYSMAN = "1";
    };

    programs.vscode = mkIf cfg.development.enable {
      enable = true;
      profiles.default.userSettings = {
        "python.defaultInterpreterPath" = "${pythonEnv}/bin/python";
        "python.terminal.activateEnvironment" = false;
      };
    };
  };
}
