{
  # The lab's stand-in for the fleet's NixOS flake, with its shape: a locked input that the
  # controller holds and the hosts do not (labpkgs, standing in for nixpkgs, served by the lab on
  # loopback: `ipex-fleet lab up` writes its URL here and locks it), and the ipex-fleet package built
  # from the source pushed inside the flake (./_source, see push.json).
  # Each host's toplevel is a plain derivation with what the deploy tooling relies on:
  # `nixos-version`, `bin/switch-to-configuration`, `sw/bin/ipex-fleet`, and an `etc/` tree.
  # Host settings (lab knobs) live in ./hosts/<name>.json, written by `ipex-fleet lab config`.
  description = "ipex-fleet lab: NixOS-like toplevels for the lab hosts";

  inputs.labpkgs.url = "@LABPKGS_URL@";

  outputs = { self, labpkgs }:
    let
      system = "x86_64-linux";
      controller = builtins.fromJSON (builtins.readFile ./controller.json);
      # The package's source travels inside the flake (push.json): built as pushed, on a host or on
      # the controller, the flake sees nothing outside itself.
      ipexFleet = labpkgs.lib.ipexFleet { src = ./_source; inherit (controller) python; inherit system; };
      files = builtins.attrNames (builtins.readDir ./hosts);
      jsonFiles = builtins.filter (f: builtins.match ".*\\.json" f != null) files;
      names = map (f: builtins.substring 0 (builtins.stringLength f - 5) f) jsonFiles;

      mkToplevel = name:
        let
          settings = builtins.fromJSON (builtins.readFile (./hosts + "/${name}.json"));
          # The same schema as flake/modules/fleet.nix writes (ipex_fleet.host.fleetconfig reads it).
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
          out = builtins.placeholder "out";
          # The generation's kernel, initrd and modules, as a NixOS toplevel links them: a separate
          # store path per version (lab knob kernel), so a kernel change is a change that needs a reboot.
          kernelVersion = settings.kernel or "6.12.0";
          kernel = derivation {
            name = "linux-lab-${kernelVersion}";
            inherit system;
            builder = "/bin/sh";
            args = [ "-c" "mkdir -p $out/lib/modules/$v && echo \"lab kernel $v\" > $out/bzImage && echo \"lab initrd $v\" > $out/initrd" ];
            PATH = "/usr/bin:/bin";
            v = kernelVersion;
          };
          # The generation's services as systemd units, as NixOS declares them.
          service = name: port: extraArgs: ''
            [Unit]
            Description=${name} (ipex-fleet lab stand-in)
            After=network.target

            [Service]
            Type=exec
            ExecStart=/usr/bin/python3 -u ${out}/share/services/${name}.py --host ${settings.address} --port ${toString port} --state /var/lib/${name}${if (settings.fail_service or null) == name then " --fail-start" else ""}${extraArgs}
            EnvironmentFile=${out}/etc/ipex-fleet/environment
            StateDirectory=${name}

            [Install]
            WantedBy=multi-user.target
          '';
          # Real node_exporter (Debian's, from the controller) serving the textfile metrics that the
          # probe, the bench and `ipex-fleet metrics` write, on the host's own address (as the
          # fleet module wires services.prometheus.exporters.node).
          nodeExporter = ''
            [Unit]
            Description=Prometheus node exporter (textfile collector)

            [Service]
            Type=exec
            ExecStart=${controller.node_exporter} --web.listen-address=${settings.address}:9100 --collector.disable-defaults --collector.textfile --collector.textfile.directory=/var/lib/prometheus-node-exporter-text
            StateDirectory=prometheus-node-exporter-text

            [Install]
            WantedBy=multi-user.target
          '';
          # The host agent's boot unit (as the fleet module declares it): at every boot, re-arm an open
          # deploy intent's watchdog with its lease counted from this boot, and finish a revert that a
          # crash interrupted. It runs the agent the controller installed, with the pinned interpreter.
          agentUnit = ''
            [Unit]
            Description=ipex-fleet host agent at boot (re-arm an open deploy intent, finish interrupted reverts)
            After=local-fs.target
            ConditionPathExists=/var/lib/ipex-fleet/agent/agent.py

            [Service]
            Type=oneshot
            RemainAfterExit=yes
            ExecStart=/var/lib/ipex-fleet/agent/run /var/lib/ipex-fleet/agent/agent.py boot

            [Install]
            WantedBy=multi-user.target
          '';
          cpuHog = ''
            [Unit]
            Description=A CPU hog beside the services (lab fault cpu_hog)

            [Service]
            Type=exec
            ExecStart=/usr/bin/python3 ${out}/share/services/cpu-hog.py --seconds 300
            RuntimeMaxSec=330
          '';
        in
        derivation {
          name = "nixos-system-${name}-lab-${settings.version}";
          inherit system;
          builder = "/bin/sh";
          args = [ labpkgs.lib.toplevelBuilder ];
          PATH = "/usr/bin:/bin";
          hostName = name;
          nixosVersion = "26.05.lab-${settings.version}";
          labpkgsRelease = labpkgs.lib.release;
          settingsJson = builtins.toJSON settings;
          fleetConfigJson = builtins.toJSON fleetConfig;
          # The generation's environment (as services.ipex.environment writes it on NixOS).
          environmentText =
            if settings.hide_accelerator or false
            then "CUDA_VISIBLE_DEVICES=-1\nZE_AFFINITY_MASK=\nONEAPI_DEVICE_SELECTOR=level_zero:none\nIPEX_FLEET_LAB_HIDE_ACCELERATOR=1\n"
            else "SYCL_CACHE_PERSISTENT=1\n";
          activate = labpkgs.lib.switchToConfiguration;
          # slow_ollama: each token takes that many times the work (fewer tokens/s, level 2's gate).
          ollamaUnit = service "ollama" 11434
            (if (settings.slow_ollama or null) != null then " --lab-slow-tokens ${toString settings.slow_ollama}" else "");
          # ComfyUI starts as on a GPU host (no --cpu), the CPU standing in for the GPU: hiding the
          # accelerator stops it at start, as real ComfyUI stops. Knob comfyui_cpu runs it with --cpu,
          # as flake/modules/comfyui.nix runs CPU hosts; fail_comfyui_jobs fails every job it runs.
          comfyuiUnit = service "comfyui" 8188
            ((if settings.comfyui_cpu or false then " --cpu" else "")
             + (if settings.fail_comfyui_jobs or false then " --lab-fail-jobs" else ""));
          cpuHogUnit = if settings.cpu_hog or false then cpuHog else "";
          inherit agentUnit;
          nodeExporterUnit = if (controller.node_exporter or null) != null then nodeExporter else "";
          # Lab fault lock_ssh: an sshd configuration that refuses every login.
          sshLock = if settings.lock_ssh or false then "DenyUsers *\n" else "";
          # Lab fault fail_boot: the boot check before boot-complete.target fails, so the boot never
          # completes and its boot entry loses a try each time (boot counting).
          failBoot = if settings.fail_boot or false then "1" else "";
          services = labpkgs.lib.services;
          inherit kernel ipexFleet;
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
