import sys

from trainer.data.show import main

sys.exit(main())
