import os

import numpy as np
import torch
from nvflare.apis.fl_constant import FLMetaKey, ReturnCode
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model_learner import ModelLearner
from nvflare.app_common.app_constant import AppConstants, ModelName
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from pt.networks.cifar10_nets import ModerateCNN


class CIFAR10ModelLearner(ModelLearner):
    def __init__(self, train_idx_root="./dataset", aggregation_epochs=1, lr=1e-2, batch_size=16):
        super().__init__()
        self.train_idx_root, self.aggregation_epochs, self.lr, self.batch_size = train_idx_root, aggregation_epochs, lr, batch_size
        self.best_acc = 0.0

    def initialize(self):
        self.info(f"Client {self.site_name} initialized at {self.app_root}")
        os.makedirs(self.app_root, exist_ok=True)
        self.best_local_model_file = os.path.join(self.app_root, "best_local_model.pt")
        self.model = ModerateCNN()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9)
        data = datasets.FakeData(size=256, image_size=(3, 32, 32), num_classes=10, transform=transforms.ToTensor())
        index_file = os.path.join(self.train_idx_root, self.site_name + ".npy")
        if not os.path.exists(index_file):
            self.stop_task(f"No subset index found! File {index_file} does not exist!")
        self.train_loader = DataLoader(Subset(data, np.load(index_file).tolist()), batch_size=self.batch_size, shuffle=True)
        self.valid_loader = DataLoader(Subset(data, range(224, 256)), batch_size=32)

    def _load(self, params):
        self.model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in params.items()})

    def _accuracy(self):
        self.model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in self.valid_loader:
                correct += (self.model(images).argmax(1) == labels).sum().item()
                total += len(labels)
        return correct / total

    def train(self, model: FLModel):
        self._load(model.params)
        self.model.train()
        for _ in range(int(self.aggregation_epochs)):
            for images, labels in self.train_loader:
                if self.is_aborted():
                    return ReturnCode.TASK_ABORTED
                self.optimizer.zero_grad()
                torch.nn.functional.cross_entropy(self.model(images), labels).backward()
                self.optimizer.step()
        acc = self._accuracy()
        if acc >= self.best_acc:
            self.best_acc = acc
            torch.save({"model_weights": self.model.state_dict()}, self.best_local_model_file)
        diff = {k: np.subtract(v.numpy(), model.params[k], dtype=np.float32) for k, v in self.model.state_dict().items()}
        result = FLModel(params_type=ParamsType.DIFF, params=diff)
        FLModelUtils.set_meta_prop(result, FLMetaKey.NUM_STEPS_CURRENT_ROUND, len(self.train_loader) * int(self.aggregation_epochs))
        return result

    def get_model(self, model_name: str):
        if model_name != ModelName.BEST_MODEL:
            raise ValueError(f"Unknown model_type: {model_name}")
        weights = torch.load(self.best_local_model_file)["model_weights"]
        return FLModel(params_type=ParamsType.FULL, params={k: v.numpy() for k, v in weights.items()})

    def validate(self, model: FLModel):
        self._load(model.params)
        owner = self.get_shareable_header(AppConstants.MODEL_OWNER)
        acc = self._accuracy()
        self.info(f"validation acc ({owner}): {acc:.4f}")
        return FLModel(metrics={"val_accuracy": acc})
