# The benchmark closure: about 1.2 GB of real binaries and libraries from the host in 12
# store paths, one of them (half the libraries) over 40% of the bytes, as real closures have
# one big path; a small leaf whose contents are `leaf` (a new release of the application); and a
# root that references them all. Built with `builtins` only.
{ system ? builtins.currentSystem, leaf ? "1" }:
let
  mk = name: script: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  # Part `i` of `parts` of the files below `src` (every parts-th file, by sorted name).
  part = src: parts: i: mk "bench${builtins.replaceStrings [ "/" ] [ "-" ] src}-${toString i}-of-${toString parts}" ''
    mkdir -p $out
    find ${src} \( -type f -o -type l \) | sort | awk -v k=${toString parts} -v i=${toString i} 'NR % k == i' \
      | tar -cf - --files-from=- 2>/dev/null | tar -xf - -C $out
  '';
  parts = src: n: builtins.genList (part src n) n;
  app = mk "bench-app-${leaf}" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\necho release ${leaf}\n' > $out/bin/app
  '';
  lib = "/usr/lib/x86_64-linux-gnu";
  # Half the libraries in one path, the other half in five; an eighth of /usr/bin in two.
  all = [ (part lib 2 0) app ] ++ map (part lib 10) [ 1 3 5 7 9 ] ++ map (part "/usr/bin" 16) [ 0 1 ] ++ parts "/usr/lib/gcc" 2;
in
mk "bench-root" ''
  mkdir -p $out
  echo ${builtins.concatStringsSep " " all} > $out/references
''
