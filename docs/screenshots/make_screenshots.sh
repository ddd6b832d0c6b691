#!/bin/bash
# screenshots of the viewer, compare and review at 1280x720 and 1920x1080 under Xvfb
set -e
cd "$(dirname "$0")/../.."
OUT=${OUT:-docs/screenshots}
for SIZE in 1280x720 1920x1080; do
  INI=$(mktemp --suffix=.ini); printf '[review]\nreviewer=Screenshot\n' > $INI
  ELVIS_VIEWER_SETTINGS=$INI xvfb-run -a -s "-screen 0 1920x1080x24" python -m elvis_viewer --demo --size $SIZE \
      --screenshot $OUT/viewer_$SIZE.png --timeout 90
  INI=$(mktemp --suffix=.ini); printf '[review]\nreviewer=Screenshot\n' > $INI
  ELVIS_VIEWER_SETTINGS=$INI xvfb-run -a -s "-screen 0 1920x1080x24" python -m elvis_viewer --demo --size $SIZE \
      --checkpoint resources/demo_model --compare "${BASELINE:?set BASELINE to a second checkpoint, e.g. a random-init demo model}" --screenshot $OUT/compare_$SIZE.png --timeout 90
  INI=$(mktemp --suffix=.ini); printf '[review]\nreviewer=Screenshot\n' > $INI
  DEMO=$(mktemp -d); cp -r resources/demo/. $DEMO/  # the review store is written beside the CSV: not into resources/
  ELVIS_VIEWER_SETTINGS=$INI xvfb-run -a -s "-screen 0 1920x1080x24" python -m elvis_viewer --size $SIZE --review \
      --annotations $DEMO/ms_cxr.csv --images $DEMO --checkpoint resources/demo_model \
      --screenshot $OUT/review_$SIZE.png --timeout 90
done
