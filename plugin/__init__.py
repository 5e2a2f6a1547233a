VERSION = "0.1.0"  # ferry's version, as ferryd's Health and its start-up log report it
