# The benchmark closure: about 1.3 GB of real binaries and libraries from the host in 12
# store paths, one of them (the libraries) about half the bytes, as real closures have one
# big path; a small leaf whose contents are `leaf` (a new release of the application); and a
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
  part = src: parts: i: mk "bench${builtins.replaceStrings [ "/" ] [ "-" ] src}-${toString i}" ''
    mkdir -p $out
    find ${src} \( -type f -o -type l \) | sort | awk -v k=${toString parts} -v i=${toString i} 'NR % k == i' \
      | tar -cf - --files-from=- 2>/dev/null | tar -xf - -C $out
  '';
  parts = src: n: builtins.genList (part src n) n;
  app = mk "bench-app-${leaf}" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\necho release ${leaf}\n' > $out/bin/app
  '';
  all = [ (part "/usr/lib/x86_64-linux-gnu" 1 0) app ] ++ parts "/usr/bin" 8 ++ parts "/usr/lib/gcc" 2;
in
mk "bench-root" ''
  mkdir -p $out
  echo ${builtins.concatStringsSep " " all} > $out/references
''
