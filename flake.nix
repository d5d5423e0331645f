{
  description = "strata: Nix closures to layered, reproducible OCI and Docker images";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      library = import ./nix;
      strataFor = system: self.packages.${system}.strata;
      flakeModule = { namespace ? "strata" }: import ./nix/flake-module.nix { inherit namespace library; defaultPackage = strataFor; };
    in
    {
      packages = forAllSystems (system: rec {
        strata = nixpkgs.legacyPackages.${system}.callPackage ./nix/package.nix { };
        default = strata;
      });

      # `nix flake check`: strata with its library tests (the package's doCheck), and an image
      # of nixpkgs' hello built by the Nix library with that strata.
      checks = forAllSystems (system: {
        strata = self.packages.${system}.strata;
        hello-image = self.lib.${system}.buildImage {
          name = "hello";
          config.Entrypoint = [ "${nixpkgs.legacyPackages.${system}.hello}/bin/hello" ];
        };
      });

      # `nix develop`: the Rust toolchain and the clients the tests check images with. (The
      # Docker engine and a registry, which the tests also need, are services: scripts/setup.)
      devShells = forAllSystems (system:
        let pkgs = nixpkgs.legacyPackages.${system}; in {
          default = pkgs.mkShell {
            inputsFrom = [ self.packages.${system}.strata ];
            packages = with pkgs; [ cargo clippy rustfmt rust-analyzer skopeo umoci pigz zstd ];
          };
        });

      formatter = forAllSystems (system: nixpkgs.legacyPackages.${system}.nixpkgs-fmt);

      apps = forAllSystems (system: {
        default = { type = "app"; program = "${self.packages.${system}.strata}/bin/strata"; };
      });

      # The Nix library per system, built with this flake's strata:
      #   strata.lib.x86_64-linux.buildImage { ... }
      # and for any other strata (a derivation with bin/strata; a store path string only in impure evaluation):
      #   strata.lib.withStrata { strata = myStrata; }
      # mkImages gives flakes without flake-parts what the flake module gives (nix/mk-images.nix);
      # flakeModule { namespace = "…"; } is the module under another namespace.
      lib = forAllSystems (system: library { strata = strataFor system; inherit system; pkgs = nixpkgs.legacyPackages.${system}; }) // {
        withStrata = library;
        mkImages = import ./nix/mk-images.nix { inherit library strataFor; defaultSystems = systems; };
        inherit flakeModule;
      };

      # perSystem.strata.images.<name> (nix/flake-module.nix); `n2c` for flakes written for n2c-mod.
      flakeModules = {
        default = flakeModule { };
        n2c = flakeModule { namespace = "n2c"; };
      };

      templates.default = {
        path = ./templates/default;
        description = "A flake-parts flake with one image built by strata";
      };
    };
}
