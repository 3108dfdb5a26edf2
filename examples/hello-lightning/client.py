# Copyright (c) 2025, NVIDIA CORPORATION.  All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
#
# FLARE's hello-lightning client (examples/hello-world/hello-lightning/client.py), run by fedray:
# the import below points at fedray instead of nvflare (inside a fedray site `import
# nvflare.client.lightning as flare` works too), and the loop leaves when the job ends.
#
#   pip install "fedray[lightning]"
#   python -m fedray.run site.script=examples/hello-lightning/client.py model._target_=model.LitNet \
#       num_clients=2 rounds=2 site.script_args="--data_root ~/.cache/fedray/cifar10"
#
# (model._target_: the server's model is the same LitNet, so that its weights' names match.)
# Offline: site.script_args="--synthetic_data", FakeData as in FLARE's example, and data=synthetic.
import argparse

import torchvision
import torchvision.transforms as transforms
from model import LitNet
from pytorch_lightning import LightningDataModule, Trainer, seed_everything
from torch.utils.data import DataLoader, random_split

# (0) import the lightning client API (FLARE: import nvflare.client.lightning as flare)
import fedray.client.lightning as flare

seed_everything(7)


DATASET_PATH = "/tmp/nvflare/data"
BATCH_SIZE = 4

transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


class CIFAR10DataModule(LightningDataModule):
    def __init__(self, data_dir: str = DATASET_PATH, batch_size: int = BATCH_SIZE, synthetic_data: bool = False):
        super().__init__()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.synthetic_data = synthetic_data

    def setup(self, stage: str):
        if self.synthetic_data:
            dataset_args = {"image_size": (3, 32, 32), "num_classes": 10, "transform": transform}
            if stage == "fit" or stage == "validate":
                self.cifar_train = torchvision.datasets.FakeData(size=32, **dataset_args)
                self.cifar_val = torchvision.datasets.FakeData(size=16, **dataset_args)
            if stage == "test" or stage == "predict":
                self.cifar_test = torchvision.datasets.FakeData(size=16, **dataset_args)
            return

        # Assign train/val datasets for use in dataloaders
        if stage == "fit" or stage == "validate":
            cifar_full = torchvision.datasets.CIFAR10(
                root=self.data_dir, train=True, download=False, transform=transform
            )
            self.cifar_train, self.cifar_val = random_split(cifar_full, [0.8, 0.2])

        # Assign test dataset for use in dataloader(s)
        if stage == "test" or stage == "predict":
            self.cifar_test = torchvision.datasets.CIFAR10(
                root=self.data_dir, train=False, download=False, transform=transform
            )

    def train_dataloader(self):
        return DataLoader(self.cifar_train, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.cifar_val, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.cifar_test, batch_size=self.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.cifar_test, batch_size=self.batch_size)


def define_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--data_root", type=str, default=DATASET_PATH)
    parser.add_argument("--limit_batches", type=int, default=0)
    parser.add_argument("--synthetic_data", action="store_true")

    return parser.parse_args()


def main():
    args = define_parser()
    batch_size = args.batch_size

    # (1) flare.init() is only needed if the flare function is used (such as flare.get_site_name())
    flare.init()
    print(f"batch_size={batch_size}, site={flare.get_site_name()}")

    model = LitNet()
    cifar10_dm = CIFAR10DataModule(
        data_dir=args.data_root,
        batch_size=batch_size,
        synthetic_data=args.synthetic_data,
    )
    trainer_args = {"max_epochs": 1, "accelerator": "auto", "devices": "auto"}
    if args.limit_batches > 0:
        trainer_args.update(
            limit_train_batches=args.limit_batches,
            limit_val_batches=args.limit_batches,
            limit_test_batches=args.limit_batches,
            limit_predict_batches=args.limit_batches,
        )
    trainer = Trainer(**trainer_args)

    # (2) patch the lightning trainer
    flare.patch(trainer)

    while flare.is_running():
        # (3) receives FLModel from NVFlare
        # Note that we don't need to pass this input_model to trainer
        # because after flare.patch the trainer.fit/validate will get the
        # global model internally
        input_model = flare.receive()
        if input_model is None:  # the job is over
            break
        print(f"\n[Current Round={input_model.current_round}, Site = {flare.get_site_name()}]\n")

        # (4) evaluate the current global model to allow server-side model selection
        print("--- validate global model ---")
        trainer.validate(model, datamodule=cifar10_dm)

        # perform local training starting with the received global model
        print("--- train new model ---")
        trainer.fit(model, datamodule=cifar10_dm)

        # test local model
        print("--- test new model ---")
        trainer.test(ckpt_path="best", datamodule=cifar10_dm)

        # get predictions
        print("--- prediction with new best model ---")
        trainer.predict(ckpt_path="best", datamodule=cifar10_dm)


if __name__ == "__main__":
    main()
