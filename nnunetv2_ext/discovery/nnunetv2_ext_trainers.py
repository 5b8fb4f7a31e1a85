"""Re-exports every nnU-Net trainer of nnunetv2_ext for nnU-Net's ``nnUNet_extTrainer`` search. Imports only:
nnU-Net imports this file as a top-level module and purges it afterwards; the classes live in nnunetv2_ext."""
from nnunetv2_ext.training.multi_encoder import (nnUNetTrainerMultiEncoder, nnUNetTrainerMultiEncoder_debug,  # noqa: F401
                                               nnUNetTrainerMultiEncoderSSL, nnUNetTrainerMultiEncoderSSL_debug)
from nnunetv2_ext.training.volume_fusion import nnUNetTrainerVolumeFusion, nnUNetTrainerVolumeFusion_debug  # noqa: F401
from nnunetv2_ext.training.vanilla import nnUNetTrainerVanilla, nnUNetTrainerVanilla_debug  # noqa: F401
from nnunetv2_ext.training.modality_dropout import nnUNetTrainerMultiEncoderModalityDropout, nnUNetTrainerMultiEncoderModalityDropout_debug  # noqa: F401,E501
from nnunetv2_ext.training.pretext_trainers import nnUNetTrainerCrossModality, nnUNetTrainerCrossModality_debug, nnUNetTrainerSwinProxies, nnUNetTrainerSwinProxies_debug  # noqa: F401
from nnunetv2_ext.training.backbones import (nnUNetTrainerBackbone, nnUNetTrainerBackbone_debug, nnUNetTrainerSegResNet, nnUNetTrainerSegResNet_debug, nnUNetTrainerSwinUNETR, nnUNetTrainerSwinUNETR_debug, nnUNetTrainerUNETR, nnUNetTrainerUNETR_debug, nnUNetTrainerVolumeFusionBackbone, nnUNetTrainerVolumeFusionBackbone_debug)  # noqa: F401,E501
from nnunetv2_ext.training.backbones import (nnUNetTrainerPCTNet, nnUNetTrainerPCTNet_debug, nnUNetTrainerTransBTS,  # noqa: F401
                                           nnUNetTrainerTransBTS_debug)
from nnunetv2_ext.training.proxy import (nnUNetTrainerProxyMultiEncoder_cpu, nnUNetTrainerProxyMultiEncoder_gpu,  # noqa: F401
                                        nnUNetTrainerProxyMultiEncoder_smoke, nnUNetTrainerProxyMultiEncoderSSL_cpu,
                                        nnUNetTrainerProxyMultiEncoderSSL_gpu, nnUNetTrainerProxyMultiEncoderSSL_smoke,
                                        nnUNetTrainerProxySwinProxies_cpu, nnUNetTrainerProxySwinProxies_gpu,
                                        nnUNetTrainerProxyVanilla_cpu, nnUNetTrainerProxyVanilla_gpu,
                                        nnUNetTrainerProxyVolumeFusion_cpu, nnUNetTrainerProxyVolumeFusion_gpu,
                                        nnUNetTrainerProxyVolumeFusion_smoke)
from nnunetv2_ext.training.proxy import (nnUNetTrainerProxyCrossModality_cpu2d, nnUNetTrainerProxyMultiEncoder_cpu2d,  # noqa: F401
                                        nnUNetTrainerProxyMultiEncoderSSL_cpu2d, nnUNetTrainerProxySwinProxies_cpu2d,
                                        nnUNetTrainerProxyVolumeFusion_cpu2d,
                                        nnUNetTrainerProxyMultiEncoderSSLFullTransfer_cpu2d,
                                        nnUNetTrainerProxyVolumeFusionSGD_cpu2d)
