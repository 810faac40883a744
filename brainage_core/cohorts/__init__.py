"""Where data come from: the synthetic aging phantom and real-scan import (IXI)."""
