# the product on the H200: gitevolve run from the plain gqa-cuda example (RESUME=1: go on with /root/run)
R=$PWD; MIN=${MIN:-4}; W=/root/run
if [ -z "$RESUME" ]; then
  rm -rf $W; mkdir -p $W; cd $W
  git init -q -b main && git config user.email run@h200 && git config user.name run
  git commit -q --allow-empty -m "Empty start"
  gitevolve init --example gqa-cuda > $OUT/init.txt 2>&1; tail -2 $OUT/init.txt
fi
cd $W; git log --oneline main | head -3
S=$(date +%s)
timeout $((MIN * 60 + 150)) gitevolve run --time ${MIN}m > $OUT/run${RESUME}.txt 2>&1; echo "run rc $? in $(( $(date +%s) - S )) s"
tail -15 $OUT/run${RESUME}.txt
gitevolve status > $OUT/status${RESUME}.txt 2>&1; gitevolve status --json > $OUT/status${RESUME}.json 2>&1
head -40 $OUT/status${RESUME}.txt
git bundle create $OUT/run.bundle --all 2>/dev/null; ls -la $OUT/run.bundle
