"""Type attention heads (Anchor / Wave / Veil) from profiles or calibration rollouts.

python tools/classify_heads.py --profiles FILE.npz --out MAP.csv
python tools/classify_heads.py --config=configs/demo.py --out MAP.csv
"""

import sys

from pyramid_jax.cli.classify import main

if __name__ == "__main__":
    sys.exit(main())
