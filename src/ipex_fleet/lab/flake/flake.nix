{
  # The lab's stand-in for a NixOS flake: no inputs, so it builds offline with Nix 2.8.
  # Each host's toplevel is a plain derivation with what the deploy tooling relies on:
  # `nixos-version`, `bin/switch-to-configuration`, and an `etc/` tree.
  # Host settings (lab knobs) live in ./hosts/<name>.json, written by `ipex-fleet lab config`.
  description = "ipex-fleet lab: NixOS-like toplevels for the lab hosts";

  outputs = { self }:
    let
      system = "x86_64-linux";
      files = builtins.attrNames (builtins.readDir ./hosts);
      jsonFiles = builtins.filter (f: builtins.match ".*\\.json" f != null) files;
      names = map (f: builtins.substring 0 (builtins.stringLength f - 5) f) jsonFiles;

      mkToplevel = name:
        let
          settings = builtins.fromJSON (builtins.readFile (./hosts + "/${name}.json"));
          # The same schema as flake/modules/fleet.nix writes (ipex_fleet.fleetconfig reads it).
          fleetConfig = {
            schema = 1;
            host = name;
            accelerator = settings.accelerator or "cpu";
            min_devices = 1;
            render_group = "render";
            services = {
              ollama = {
                url = "http://${settings.address}:11434";
                models = "/var/lib/ollama/models";
                unit = "ollama.service";
                accelerator = "cpu";
                smoke_model = settings.smoke_model or null;
              };
              comfyui = {
                url = "http://${settings.address}:8188";
                models = "/var/lib/comfyui/models";
                unit = "comfyui.service";
                accelerator = "cpu";
                smoke_model = null;
              };
            };
            health = { levels = [ 1 2 ]; bench_tolerance = 0.15; memory_fraction = 0.5; required_checks = [ ]; };
          };
        in
        derivation {
          name = "nixos-system-${name}-lab-${settings.version}";
          inherit system;
          builder = "/bin/sh";
          args = [ ./build.sh ];
          PATH = "/usr/bin:/bin";
          hostName = name;
          nixosVersion = "26.05.lab-${settings.version}";
          settingsJson = builtins.toJSON settings;
          fleetConfigJson = builtins.toJSON fleetConfig;
          # The generation's environment (as services.ipex.environment writes it on NixOS).
          environmentText =
            if settings.hide_accelerator or false
            then "CUDA_VISIBLE_DEVICES=-1\nZE_AFFINITY_MASK=\nONEAPI_DEVICE_SELECTOR=level_zero:none\nIPEX_FLEET_LAB_HIDE_ACCELERATOR=1\n"
            else "SYCL_CACHE_PERSISTENT=1\n";
          activate = ./activate.py;
          services = ./services;
        };
    in
    {
      nixosConfigurations = builtins.listToAttrs (map
        (name: {
          inherit name;
          value.config.system.build.toplevel = mkToplevel name;
        })
        names);
    };
}
