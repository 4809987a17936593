{
  description = "ipex-fleet: NixOS modules for Intel GPU AI hosts serving Ollama and ComfyUI";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # Intel's XPU stack (oneAPI, SYCL builds), as the seed documents name it.
    intel-xpu = {
      url = "github:MordragT/nixos";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, intel-xpu, ... }:
    let
      system = "x86_64-linux";
      lib = nixpkgs.lib;
      hosts = import ./lib/hosts.nix;
      # The probe package's source travels inside the pushed flake (ipex-fleet copies it to
      # ./_source, see push.json); in a checkout, the repository around the flake.
      source = if builtins.pathExists ./_source then ./_source else ./..;
      pkgs = import nixpkgs {
        inherit system;
        overlays = [ self.overlays.intel-xpu ];
      };
    in
    {
      overlays.intel-xpu = import ./overlays/intel-xpu.nix { inherit intel-xpu; };

      # Each single module also brings this base (imported once, by its key): the overlay, and the
      # ipex-fleet package built from the host's own package set with the torch of its accelerator
      # (overlays/intel-xpu.nix says which combinations are proven), never from a flake-level set.
      nixosModules =
        let
          base = { config, lib, pkgs, ... }: {
            key = "ipex-fleet#base";
            imports = [ ./modules/fleet.nix ];
            nixpkgs.overlays = [ self.overlays.intel-xpu ];
            # XPU hosts: intel-python's torch; others: nixpkgs' (CUDA under cudaSupport, else CPU).
            # The host's own package: none of the controller's dependencies (packages/ipex-fleet-host.nix).
            services.ipex-fleet.package = lib.mkDefault (pkgs.callPackage ./packages/ipex-fleet-host.nix {
              src = source;
              python3Packages =
                if config.services.ipex-fleet.accelerator == "xpu" then pkgs.intel-xpu.python.pkgs else pkgs.python3Packages;
            });
          };
          single = file: { imports = [ base file ]; };
        in
        {
          ipex = single ./modules/ipex.nix;
          ollama = single ./modules/ollama.nix;
          comfyui = single ./modules/comfyui.nix;
          models = single ./modules/models.nix;
          fleet = single ./modules/fleet.nix;
          # A controller host (not a fleet host): scheduled `ipex-fleet maintain` runs.
          controller = { pkgs, lib, ... }: {
            imports = [ ./modules/controller.nix ];
            services.ipex-fleet-controller.package = lib.mkDefault (pkgs.callPackage ./packages/ipex-fleet.nix { src = source; });
          };
          default = {
            imports = [ base ./modules/ipex.nix ./modules/ollama.nix ./modules/comfyui.nix ./modules/models.nix ];
          };
        };

      packages.${system} = {
        ipex-fleet = pkgs.callPackage ./packages/ipex-fleet.nix { src = source; };
        # What fleet hosts run (probe, bench, models, metrics, agent), without the controller's dependencies.
        ipex-fleet-host = pkgs.callPackage ./packages/ipex-fleet-host.nix { src = source; };
        # The benchmark by name: ipex-benchmark [--quick] [--json] [--tensor-only|--conv-only|--sd-only|...]
        ipex-benchmark = pkgs.callPackage ./packages/ipex-fleet-host.nix { src = source; mainProgram = "ipex-benchmark"; };
        comfyui-nodes-controlnet-aux = pkgs.comfyui-nodes.controlnet-aux;
        comfyui-nodes-upscaling = pkgs.comfyui-nodes.upscaling;
        default = self.packages.${system}.ipex-fleet;
      };

      apps.${system}.ipex-benchmark = {
        type = "app";
        program = "${self.packages.${system}.ipex-benchmark}/bin/ipex-benchmark";
      };

      # A developer's environment on the host's accelerator (home-manager).
      # Each brings (once, by its key) the overlay and the package source as module arguments; the
      # user's own pkgs stay untouched (the overlay is applied with pkgs.extend inside).
      homeManagerModules =
        let
          base = {
            key = "ipex-fleet#home-base";
            _module.args.ipexFleet = { overlay = self.overlays.intel-xpu; inherit source; };
          };
        in
        {
          ipex = { imports = [ base ./home/ipex.nix ]; };
          comfyui-ipex = { imports = [ base ./home/comfyui-ipex.nix ]; };
          default = { imports = [ base ./home/ipex.nix ./home/comfyui-ipex.nix ]; };
        };

      nixosConfigurations = lib.mapAttrs
        (name: hostModules: lib.nixosSystem {
          inherit system;
          # hosts/<name>/default.nix and its hardware-configuration.nix (lib/hosts.nix).
          modules = [ self.nixosModules.default ] ++ hostModules ++ [
            { networking.hostName = lib.mkDefault name; }
          ];
        })
        hosts.modules;

      devShells.${system}.default = pkgs.mkShell {
        packages = [
          (pkgs.python3.withPackages (ps: [ ps.pyinfra ps.paramiko ps.jinja2 ps.pyyaml ps.pytest ps.torch ]))
          pkgs.nix
          pkgs.openssh
          pkgs.nftables
        ];
      };

      checks.${system} =
        {
          ipex-fleet = self.packages.${system}.ipex-fleet;
          ipex-fleet-host = self.packages.${system}.ipex-fleet-host;
        }
        // lib.mapAttrs' (name: cfg: lib.nameValuePair "toplevel-${name}" cfg.config.system.build.toplevel)
          self.nixosConfigurations;
    };
}
