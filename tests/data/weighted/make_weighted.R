# Reference values for prior-weighted fits, computed by lme4 and lmerTest.
#
# Run from this directory: Rscript make_weighted.R
# Reads the CSVs of ../reference/data, adds a deterministic weight column `w`, writes
# the weighted data (sleepstudy_w.csv, psycholing_w.csv) and weighted.json.
suppressMessages({
  library(lme4)
  library(lmerTest)
  library(jsonlite)
})

sleep <- read.csv("../reference/data/sleepstudy.csv")
sleep$Subject <- factor(sleep$Subject)
sleep$w <- 0.5 + (sleep$Days %% 4) / 2 + (as.integer(sleep$Subject) %% 3) / 4
write.csv(sleep, "sleepstudy_w.csv", row.names = FALSE)

psy <- read.csv("../reference/data/psycholing.csv")
psy$subject <- factor(psy$subject)
psy$item <- factor(psy$item)
psy$w <- 1 + ((seq_len(nrow(psy)) * 7) %% 5) / 4
write.csv(psy, "psycholing_w.csv", row.names = FALSE)

record <- function(id, formula, data, reml) {
  m <- lmerTest::lmer(formula, data = data, weights = w, REML = reml,
                      control = lmerControl(optimizer = "bobyqa",
                                            optCtrl = list(rhoend = 1e-10, maxfun = 1e5)))
  s <- summary(m)$coefficients
  re <- ranef(m)
  list(
    id = id,
    formula = deparse(formula),
    reml = reml,
    nobs = nobs(m),
    fixef = as.list(fixef(m)),
    fixef_se = as.list(sqrt(diag(as.matrix(vcov(m))))),
    df = as.list(s[, "df"]),
    theta = unname(getME(m, "theta")),
    sigma = sigma(m),
    objective = if (reml) unname(REMLcrit(m)) else unname(deviance(m)),
    logLik = as.numeric(logLik(m)),
    ranef = lapply(re, function(r) lapply(as.list(r), function(col) col)),
    ranef_levels = lapply(re, rownames),
    fitted = unname(fitted(m)),
    resid = unname(residuals(m)),
    hatvalues = unname(hatvalues(m)),
    predict_newdata = unname(predict(m, newdata = data[1:5, ], allow.new.levels = TRUE))
  )
}

out <- list(
  lme4_version = as.character(packageVersion("lme4")),
  lmerTest_version = as.character(packageVersion("lmerTest")),
  cases = list(
    record("sleepstudy_slopes_w", Reaction ~ Days + (Days | Subject), sleep, TRUE),
    record("sleepstudy_slopes_w_ml", Reaction ~ Days + (Days | Subject), sleep, FALSE),
    record("psycholing_crossed_w", rt ~ condition + (1 | subject) + (1 | item), psy, TRUE)
  )
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "weighted.json")
