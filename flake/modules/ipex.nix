# Intel GPU base: drivers and compute runtime (Level Zero), the render group, and the
# environment the XPU stack reads. IPEX itself is optional: upstream torch.xpu is the default.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ipex;
  inherit (lib) mkEnableOption mkIf mkOption types;
in
{
  options.services.ipex = {
    enable = mkEnableOption "the Intel GPU (XPU) compute stack: drivers, Level Zero, render access";

    devices = mkOption {
      type = types.listOf (types.enum [ "gpu" "cpu" ]);
      default = [ "gpu" ];
      example = [ "gpu" "cpu" ];
      description = ''
        Which SYCL devices XPU workloads see when `deviceSelector` is null: Intel GPUs through Level
        Zero (`level_zero:gpu`), the CPU through OpenCL (`opencl:cpu`), or both.
      '';
    };

    deviceSelector = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "level_zero:0";
      description = "Value of ONEAPI_DEVICE_SELECTOR for XPU workloads; null derives it from `devices`.";
    };

    persistentKernelCache = mkOption {
      type = types.bool;
      default = true;
      description = "Set SYCL_CACHE_PERSISTENT=1 so JIT-compiled kernels survive restarts.";
    };

    sysman = mkOption {
      type = types.bool;
      default = true;
      description = "Set ZES_ENABLE_SYSMAN=1 (deprecated upstream, still read by older stacks and xpu-smi).";
    };

    legacyIpex = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Also provide intel-extension-for-pytorch. IPEX is end-of-life (last release 2.8,
        archived 2026-03) and must match torch exactly; leave this off unless a workload needs it.
      '';
    };

    renderUsers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "alice" ];
      description = ''
        Existing users (defined elsewhere) added to the render and video groups, for
        /dev/dri/renderD* access. Not for the services: Ollama and ComfyUI run as DynamicUsers and
        their modules grant them the render group and the char-drm device themselves.
      '';
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      readOnly = true;
      description = "The environment variables this module derives; services merge them into their own.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.devices != [ ];
        message = "services.ipex.devices is empty: list \"gpu\", \"cpu\" or both";
      }
      {
        assertion = lib.all (u: !(lib.elem u [ "ollama" "comfyui" ])) cfg.renderUsers;
        message = "services.ipex.renderUsers: ollama and comfyui run as DynamicUsers and get render "
          + "access from their own modules; remove them from renderUsers";
      }
      {
        assertion = !cfg.legacyIpex || pkgs.intel-xpu.ipexPython != null;
        message = "services.ipex.legacyIpex needs the intel-xpu input to provide intel-python; "
          + "use upstream torch.xpu (legacyIpex = false) instead";
      }
    ];

    hardware.graphics = {
      enable = true;
      extraPackages = with pkgs; [
        intel-compute-runtime # OpenCL and Level Zero for Arc, Flex and Max
        intel-media-driver
        vpl-gpu-rt
      ];
    };

    services.ipex.environment =
      {
        ONEAPI_DEVICE_SELECTOR = if cfg.deviceSelector != null then cfg.deviceSelector
          else lib.concatStringsSep ";" (map (d: { gpu = "level_zero:gpu"; cpu = "opencl:cpu"; }.${d}) cfg.devices);
      }
      // lib.optionalAttrs cfg.persistentKernelCache { SYCL_CACHE_PERSISTENT = "1"; }
      // lib.optionalAttrs cfg.sysman { ZES_ENABLE_SYSMAN = "1"; };

    environment.sessionVariables = cfg.environment;
    environment.systemPackages = with pkgs; [ clinfo level-zero ]
      ++ lib.optional cfg.legacyIpex pkgs.intel-xpu.ipexPython;

    users.groups.render = { };
    users.users = lib.genAttrs cfg.renderUsers (_: { extraGroups = [ "render" "video" ]; });
  };
}
