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
      pkgs = import nixpkgs {
        inherit system;
        overlays = [ self.overlays.intel-xpu ];
      };
    in
    {
      overlays.intel-xpu = import ./overlays/intel-xpu.nix { inherit intel-xpu; };

      nixosModules = {
        ipex = ./modules/ipex.nix;
        ollama = ./modules/ollama.nix;
        comfyui = ./modules/comfyui.nix;
        models = ./modules/models.nix;
        fleet = ./modules/fleet.nix;
        default = {
          imports = [
            ./modules/ipex.nix
            ./modules/ollama.nix
            ./modules/comfyui.nix
            ./modules/models.nix
            ./modules/fleet.nix
          ];
          nixpkgs.overlays = [ self.overlays.intel-xpu ];
          services.ipex-fleet.package = lib.mkDefault self.packages.${system}.ipex-fleet;
        };
      };

      packages.${system} = {
        ipex-fleet = pkgs.callPackage ./packages/ipex-fleet.nix { src = ./..; };
        default = self.packages.${system}.ipex-fleet;
      };

      nixosConfigurations = lib.mapAttrs
        (name: hostModule: lib.nixosSystem {
          inherit system;
          modules = [
            self.nixosModules.default
            hostModule
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
        }
        // lib.mapAttrs' (name: cfg: lib.nameValuePair "toplevel-${name}" cfg.config.system.build.toplevel)
          self.nixosConfigurations;
    };
}
