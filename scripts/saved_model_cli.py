#!/usr/bin/env python3
"""saved_model_cli with tensorflow-text's ops registered, for the SavedModels of trainer-export.

    python scripts/saved_model_cli.py run --dir DIR --tag_set serve \
        --signature_def serving_default --input_exprs 'text=["good day"]'

`saved_model_cli show` reads such a SavedModel as it is. `saved_model_cli run` loads its graph in a
process that never imports tensorflow_text, and fails with "Op type not registered
'RegexSplitWithOffsets'": this is saved_model_cli after `import tensorflow_text`. (TF Serving's
model server has tensorflow-text's ops built in.)
"""
import sys

import tensorflow_text  # noqa: F401  (registers the tokenizer's ops)
from tensorflow.python.tools import saved_model_cli

if __name__ == "__main__":
    sys.argv[0] = "saved_model_cli"
    sys.exit(saved_model_cli.main())
