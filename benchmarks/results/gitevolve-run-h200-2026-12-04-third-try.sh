# From the repository root on the device, after setup.sh: a user's run of the gqa-cuda example. MIN=minutes.
REPO=$PWD; R=/root/run
rm -rf $R && mkdir -p $R && cd $R && git init -q -b main && git config user.name gpu && git config user.email gpu@localhost \
  && git commit -q --allow-empty -m "Empty start" && gitevolve init --example gqa-cuda | tail -2
echo "run: gitevolve run --islands 5 --time ${MIN}m"
date +%s > $OUT/run_started
timeout $((MIN*60+200)) gitevolve run --islands 5 --time ${MIN}m > $OUT/run.log 2>&1; echo "run exit $?"
date +%s > $OUT/run_ended
tail -25 $OUT/run.log
gitevolve status > $OUT/status.txt 2>&1; gitevolve status --json > $OUT/status.json 2>&1
cat $OUT/status.txt | head -30
git log --branches --oneline | wc -l
cd $REPO
