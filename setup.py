"""rdance: reward scaling for visual generation, in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="rdance",
    version="0.1.0",
    description="Generative reward models (InternVL) and reward fine-tuning of FLUX/Wan generators in JAX/Flax",
    packages=find_packages(include=["rdance", "rdance.*"]),
    # The synthetic world's pretrained generator and VLMs (rdance/world/pretrained), a few MB.
    package_data={"rdance.world.pretrained": ["manifest.json", "*/*", "*/*/*"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "ml-collections>=1.1.0",
        "absl-py>=2.1",
        "grain>=0.2.18",
        "tensorboardX>=2.6",
        "safetensors>=0.5",
        "numpy>=1.26",
        "pillow>=10",
        "tokenizers>=0.21",
        "psutil>=5.9",
        # The workdir lock of every training job and stage runner (flock: released if a run dies).
        "filelock>=3.12",
        # transformers' apply_chat_template renders the checkpoints' Jinja chat templates.
        "jinja2>=3.1",
        # Tokenizers and chat templates of checkpoints (AutoTokenizer only; never model code or torch).
        "transformers>=5.0",
    ],
    extras_require={
        # torch must stay pinned: an unpinned torch pulls a multi-GB CUDA build.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.6",  # the README's test command runs the suite on 2 workers (-n 2)
            "portpicker>=1.6",
            "torch==2.13.0",
            "transformers==5.23.0",
            "diffusers==0.42.1",
            "jax[tpu]>=0.10.2",
            "tensorflow-datasets>=4.9.10", "pyarrow", "importlib_resources",
            "nbclient", "nbformat", "ipykernel",  # tests/launch/test_notebook.py runs launch/colab_smoke.ipynb
            "tensorboard>=2.16",  # tests/docs/test_tensorboard.py runs the README's `tensorboard --logdir`
            "import-linter>=2.1",  # tests/test_layers.py holds the package to the layers in .importlinter
            "apache-beam>=2.78.0",  # tests/data/test_beam.py converts with Beam's DirectRunner
            "imageio-ffmpeg==0.8.1",  # tests/models/wan/test_generate.py checks the MP4 it writes
        ],
        # MP4s from `rdance.run.generate --task=t2v|i2v` (an ffmpeg binary in the wheel); without
        # it the command writes the frames as PNGs only.
        "video": ["imageio-ffmpeg==0.8.1"],
        # gcsfs / google-cloud-storage let orbax, etils and tensorboardX write gs:// workdirs.
        "tpu": ["jax[tpu]>=0.10.2", "gcsfs", "google-cloud-storage"],
        # Converting preference sets to ArrayRecord (no TensorFlow needed) and reading parquet.
        # `tensorboard --logdir WORKDIR` (rdance writes the events with tensorboardX alone).
        "tensorboard": ["tensorboard>=2.16"],
        "data": ["tensorflow-datasets>=4.9.10", "array-record", "pyarrow", "importlib_resources"],
        # Converting through Apache Beam (`--beam_pipeline_options`): the DirectRunner on one
        # machine; Dataflow needs apache-beam[gcp], Spark and Flink their own job servers.
        "beam": ["apache-beam>=2.78.0", "tensorflow-datasets>=4.9.10", "array-record", "pyarrow",
                 "importlib_resources"],
    },
    entry_points={
        "console_scripts": [
            "rdance-fit=rdance.run.fit_check:run",
            "rdance-generate=rdance.run.generate:run",
            "rdance-score=rdance.run.score:run",
        ],
    },
)
