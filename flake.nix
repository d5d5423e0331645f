{
  description = "strata: Nix closures to layered, reproducible OCI and Docker images";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
    in
    {
      packages = forAllSystems (system: rec {
        strata = nixpkgs.legacyPackages.${system}.callPackage ./nix/package.nix { src = self; };
        default = strata;
      });

      apps = forAllSystems (system: {
        default = { type = "app"; program = "${self.packages.${system}.strata}/bin/strata"; };
      });

      # The Nix library per system, built with this flake's strata:
      #   strata.lib.x86_64-linux.buildImage { ... }
      # and for any other strata (a derivation or store path with bin/strata):
      #   strata.lib.withStrata { strata = myStrata; }
      lib = forAllSystems (system: import ./nix { strata = self.packages.${system}.strata; inherit system; })
        // { withStrata = import ./nix; };
    };
}
