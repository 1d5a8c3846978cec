# the product on the H200: gitevolve run from the plain gqa-cuda example, then its champion beside the sweep's pick
R=$PWD; MIN=${MIN:-4}
git --version; W=/root/run; rm -rf $W; mkdir -p $W; cd $W
git init -q -b main && git config user.email run@h200 && git config user.name run
git commit -q --allow-empty -m "Empty start"
python3 -m gitevolve init --example gqa-cuda > $OUT/init.txt 2>&1; tail -2 $OUT/init.txt
git log --oneline | head -3
timeout $((MIN * 60 + 120)) python3 -m gitevolve run --time ${MIN}m > $OUT/run.txt 2>&1; echo "run rc $?"
tail -25 $OUT/run.txt
python3 -m gitevolve status > $OUT/status.txt 2>&1; python3 -m gitevolve status --json > $OUT/status.json 2>&1
head -30 $OUT/status.txt
git bundle create $OUT/run.bundle --all 2>/dev/null; ls -la $OUT/run.bundle
BEST=$(python3 - <<'P'
import json
import os
d = json.load(open(os.environ["OUT"] + "/status.json"))
rows = []
def walk(x):
    if isinstance(x, dict):
        if "commit" in x and isinstance(x.get("score"), (int, float)): rows.append(x)
        for v in x.values(): walk(v)
    elif isinstance(x, list):
        for v in x: walk(v)
walk(d)
print(max(rows, key=lambda r: r["score"])["commit"] if rows else "")
P
)
echo "best $BEST"
[ -n "$BEST" ] && git show $BEST:attention.py > /root/best.py && cd $R && for f in /root/best.py $R/.before/pick.py; do
  (cd $(dirname $f) && timeout 200 python3 $R/hooks/gqa_mlx.py --backend cuda --scenarios gpu --timeout 190 --file $f | tail -1 | python3 -c "import json,sys; r=json.load(sys.stdin); m=r.get('metrics',{}); print('$f', r['status'], r.get('score'), r.get('reason','')[:200]); print(json.dumps({k: v for k, v in m.items() if k.startswith('speedup.')}))" | tee -a $OUT/side_by_side.txt)
done
